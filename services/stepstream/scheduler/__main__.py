"""`python -m stepstream.scheduler`: the scheduler service alone in this process."""

from stepstream.config import SchedulerSettings
from stepstream.runner import run_service, scheduler_service

if __name__ == "__main__":
    run_service("scheduler", lambda: scheduler_service(SchedulerSettings.from_env()))
