"""``python -m pipeline_tests.fake_replicate``: run the fake Replicate server (see the package doc)."""

from pipeline_tests.fake_replicate.process import main

main()
