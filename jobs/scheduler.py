"""The nightly job under APScheduler, for hosts without cron: same as `finops schedule`.

python jobs/scheduler.py --config /etc/finops/finops.toml
"""

import sys

from finops.cli import app

if __name__ == "__main__":
    app(["schedule", *sys.argv[1:]])
