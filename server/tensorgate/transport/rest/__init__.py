"""The REST shim: routes from the schema, JSON mapping, OpenAPI, the generate routes."""
