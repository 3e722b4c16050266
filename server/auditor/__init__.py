"""The auditor portal: archive search, verification, playback, export and legal holds."""
