"""The sub-commands of `leukoml`, one module per concern; `leukoml.cli` assembles them.

Each `add_<command>` declares the options (with help and defaults) and each
`_run_<command>` validates its input before importing TensorFlow or opening
an MLflow run, then calls one function of the package. May import anything
below it; nothing imports it but `leukoml.cli`.
"""
