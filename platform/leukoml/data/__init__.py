"""The data room: DataSpec -> listing -> decode cache -> siblings/copies -> grouped split.

`prepare_dataset(spec)` is the one entry point for every job (train, search,
promote, explain, evaluate). It may import only `leukoml.names`,
`leukoml.errors` and `leukoml.progress`; the tf.data feed lives in
`leukoml.data.tfdata` and MLflow logging in `leukoml.data.tracking`, kept out
of this import so the decode workers (spawned processes) load neither
TensorFlow nor MLflow.
"""

from leukoml._lazy import lazy_exports

# Re-exported lazily (PEP 562): `leukoml.data.spec` and the listing must not load
# pandas and scikit-learn, so a command checks its input before any heavy import.
_EXPORTS = {
    "._cache": ("cache_root",),
    "._decode": ("IMAGE_SUFFIXES", "MAX_PIXELS", "ImageError", "decode_image"),
    "._discover": ("Listing", "scan_dataset"),
    "._leakage": ("LeakageReport",),
    "._prepare": ("PreparedData", "prepare_dataset", "sibling_ids"),
    "._source": ("SYNTHETIC", "check_source", "list_source", "parse_synthetic", "resolve_data"),
    "._synthetic": ("SYNTHETIC_CLASSES", "render_cell"),
    ".spec": ("NO_GROUPS", "SIBLINGS", "DataSpec"),
    "leukoml.names": ("SPLITS",),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
