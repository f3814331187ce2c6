"""Storage and the model registry: where runs and promoted models live, on any disk or object store.

* ``storage``  one layer over ``pyarrow.fs`` for a local folder or a URI (``s3://``, ``gs://``, ...);
* ``layout``   the registry's names on storage and the checks every part shares;
* ``versions`` promote a checkpoint into ``v<N>``, fetch a version to load, describe them all;
* ``pointers`` ``latest`` with its history (rollback) and the aliases;
* ``cli``      ``mlp registry`` (also ``mlp-registry`` and ``python -m mlp.registry``).

The registry's API is re-exported here, so callers write ``registry.promote(...)``.
"""

from mlp.registry.layout import (COMPLETE_MARKER, COPIED_FILES, LATEST, NO_MODEL_FIX, RegistryError,
                                 is_version_number, list_versions, model_dir, model_location)
from mlp.registry.pointers import (check_alias_name, delete_alias, list_aliases, locate_version, read_alias,
                                   read_history, read_latest, rollback, set_alias, set_latest, version_of)
from mlp.registry.versions import (STAGING_MAX_AGE_S, describe_versions, make_provenance, promote,
                                   remove_abandoned_staging, resolve_version, source_run)

__all__ = [
    "COMPLETE_MARKER", "COPIED_FILES", "LATEST", "NO_MODEL_FIX", "RegistryError", "is_version_number",
    "list_versions", "model_dir", "model_location", "check_alias_name", "delete_alias", "list_aliases",
    "locate_version", "read_alias", "read_history", "read_latest", "rollback", "set_alias", "set_latest",
    "version_of", "STAGING_MAX_AGE_S", "describe_versions", "make_provenance", "promote",
    "remove_abandoned_staging", "resolve_version", "source_run",
]
