"""soakd's service side: configuration, scheduling, telemetry, exporter, journal and CLI."""
