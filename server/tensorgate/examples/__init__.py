"""The bundled example repository and the templates it is built from."""
