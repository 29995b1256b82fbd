"""`python -m stepstream.api`: the api service alone in this process."""

from stepstream.config import ApiSettings
from stepstream.runner import api_service, run_service

if __name__ == "__main__":
    run_service("api", lambda: api_service(ApiSettings.from_env()))
