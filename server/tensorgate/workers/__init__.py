"""Worker processes: a supervisor and the workers that share the server's ports."""
