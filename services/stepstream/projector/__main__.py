"""`python -m stepstream.projector`: the projector service alone in this process."""

from stepstream.config import ProjectorSettings
from stepstream.runner import projector_service, run_service

if __name__ == "__main__":
    run_service("projector", lambda: projector_service(ProjectorSettings.from_env()))
