"""The query store: runs and their histories, kept by the indexer, read by the api."""

from stepstream.store.sqlite import QueryStore, RunRow, event_to_dict

__all__ = ["QueryStore", "RunRow", "event_to_dict"]
