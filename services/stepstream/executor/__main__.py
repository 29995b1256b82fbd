"""`python -m stepstream.executor`: the executor service alone in this process."""

from stepstream.config import ExecutorSettings
from stepstream.runner import executor_tasks, run_service

if __name__ == "__main__":
    run_service("executor", lambda: executor_tasks(ExecutorSettings.from_env()))
