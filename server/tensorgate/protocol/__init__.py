"""Codecs between wire formats and the internal request and response types."""
