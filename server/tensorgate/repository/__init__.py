"""The model repository: configs, versions, supported fields, loading and unloading."""
