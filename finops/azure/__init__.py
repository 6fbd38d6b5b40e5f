"""Everything that talks to Azure. Other packages use these names, never azure.* directly."""

from azure.core.exceptions import AzureError, HttpResponseError

# What one source failing for one scope may raise: recorded, and the night goes on.
COLLECTION_ERRORS = (AzureError, ValueError, KeyError)

__all__ = ["COLLECTION_ERRORS", "AzureError", "HttpResponseError"]
