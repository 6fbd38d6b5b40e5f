"""`finops schedule`: the nightly job in a long-running process (APScheduler).

One night at a time (max_instances=1, and the store's night lock across processes), missed
nights coalesced into one, a grace time for nights missed while the process was down, and a
clean stop on SIGTERM or SIGINT that lets a running night finish.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger

log = logging.getLogger("finops")
FIELDS = ("second", "minute", "hour", "day", "month", "day_of_week")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def trigger_fields(expression: str) -> dict[str, str]:
    """Six-field cron (second minute hour day month weekday, weekday 0 or 7 = Sunday as in
    cron and NCRONTAB) as CronTrigger arguments; ValueError when it is not one."""
    parts = expression.split()
    if len(parts) != 6:
        raise ValueError("must have six fields: second minute hour day month weekday")
    # APScheduler counts weekdays from Monday = 0; cron from Sunday = 0: use names instead.
    parts[5] = re.sub(r"\d+", lambda m: WEEKDAYS[int(m.group()) % 8], parts[5])
    fields = dict(zip(FIELDS, parts, strict=True))
    try:
        CronTrigger(**fields)
    except ValueError as e:
        raise ValueError(f"not a valid schedule: {e}") from None
    return fields


class WallClockCronTrigger(CronTrigger):
    """A cron trigger that fires once per wall-clock time, as cron does: on the night clocks
    go back, CronTrigger fires a 02:30 night at 02:30 summer time and again an hour later at
    02:30 winter time, two nights and two mails. The repeat is skipped."""

    def get_next_fire_time(self, previous_fire_time, now):
        fire = super().get_next_fire_time(previous_fire_time, now)
        while (
            fire is not None
            and previous_fire_time is not None
            and _wall(fire) == _wall(previous_fire_time.astimezone(fire.tzinfo))
        ):
            # in UTC: adding to a local time in the repeated hour lands before it again
            later = (fire.astimezone(UTC) + timedelta(seconds=1)).astimezone(fire.tzinfo)
            fire = super().get_next_fire_time(fire, later)
        return fire


def _wall(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None)


def trigger_for(schedule) -> WallClockCronTrigger:
    return WallClockCronTrigger(**trigger_fields(schedule.cron), timezone=schedule.time_zone)


def serve(settings, night: Callable[[], str]) -> None:
    """Run `night` on the configured schedule until SIGTERM or SIGINT."""
    schedule = settings.schedule
    trigger = trigger_for(schedule)
    scheduler = BlockingScheduler(timezone=schedule.time_zone)

    running = threading.Lock()  # held while a night runs, so a stop can wait for it

    def job() -> None:
        with running:
            try:
                log.info("scheduled night finished: %s", night())
            except Exception as e:  # the scheduler lives on to the next night
                log.error("scheduled night failed: %s", str(e).splitlines()[0] if str(e) else e)

    scheduler.add_job(
        job,
        trigger,
        id="finops-night",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=schedule.misfire_grace_seconds,
    )

    def stop(signum, _frame) -> None:
        log.info("%s received: stopping after any running night", signal.Signals(signum).name)
        scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    first = trigger.get_next_fire_time(None, datetime.now(trigger.timezone))
    log.info(
        "scheduler started: '%s' (%s), first night at %s", schedule.cron, schedule.time_zone, first
    )
    scheduler.start()
    with running:  # a night under way finishes (it is one transaction either way)
        log.info("scheduler stopped")
