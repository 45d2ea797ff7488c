"""The handoff hook (``pipeline.orchestration.handoff``): after the last asset of a
``plan_video``, ``render_segment`` or ``render_music`` run succeeds, that run queues the next
stage's runs itself instead of waiting for a sensor tick. Thin glue: the decisions are the
planner's and the handoff module's; a failed handoff is logged and left to the sensors."""

from __future__ import annotations

import dagster as dg

from pipeline.orchestration.handoff import HANDOFF_AFTER, hand_off
from pipeline.printable import printable


@dg.success_hook(name="handoff", required_resource_keys={"pipeline"})
def handoff_hook(context: dg.HookContext) -> None:
    """On the success of a job's last asset step (``HANDOFF_AFTER``): ``handoff.hand_off``. Logs
    the runs it queued or why it queued none; never raises (the sensors are the backstop)."""
    asset = context.op.name
    if asset not in HANDOFF_AFTER.values():
        return
    try:
        done = hand_off(context.instance, context.run_id, asset, context.resources.pipeline.manifests_dir)
    except Exception as exc:  # noqa: BLE001 - the sensors do it on their next tick
        context.log.warning(f"handoff after {asset} failed; the sensors will request the next runs: "
                            f"{printable(repr(exc))}")
        return
    if done.queued:
        context.log.info(f"handoff: queued {len(done.queued)} run(s) after {asset}: "
                         + ", ".join(r[:8] for r in done.queued))
    else:
        context.log.debug(f"handoff after {asset}: nothing queued ({done.skipped})")
