"""Azure Functions (Python v2 programming model): the nightly job on a timer trigger.

Settings come from the app settings (FINOPS_* variables, the same as everywhere); the identity
is the app's managed identity through DefaultAzureCredential. The schedule is the app setting
FINOPS_SCHEDULE__CRON (six-field NCRONTAB, e.g. "0 0 2 * * *"). Functions keep no disk: set
FINOPS_DB_URL to PostgreSQL, and FINOPS_REPORT_CONTAINER_URL so the report is kept in Blob
storage as well as mailed.
"""

import logging
import os
import tempfile
from pathlib import Path

import azure.functions as func

from finops.config import load_settings
from finops.pipeline import nightly

app = func.FunctionApp()
log = logging.getLogger("finops")


@app.timer_trigger(
    schedule="%FINOPS_SCHEDULE__CRON%", arg_name="timer", run_on_startup=False, use_monitor=True
)
def finops_nightly(timer: func.TimerRequest) -> None:
    if timer.past_due:
        log.warning("the timer is past due: running the missed night now")
    overrides = {}
    if "FINOPS_REPORTS_DIR" not in os.environ:  # the only writable place on Functions
        overrides["reports_dir"] = Path(tempfile.gettempdir()) / "finops-reports"
    result = nightly(load_settings(**overrides))
    log.info(
        "finops night %s: %s finding(s), report %s", result.run_id, result.findings, result.report
    )
