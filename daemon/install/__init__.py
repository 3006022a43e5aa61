"""soakd as a launchd job (macOS) or a systemd unit (Linux): `soakd service install|uninstall|status`.

- spec.py: which service manager, which domain (per user or system), the job's paths and user;
- render.py: the files, from a spec (plists with plistlib; units, newsyslog and sudoers rules
  from the jinja2 templates in templates/, shipped as package data);
- manager.py: writing them (under a --prefix if asked) and running launchctl/systemctl.

The launchd job's main process is daemon/supervisor.py, kept apart: standard library only.
Nothing is imported here, so `daemon.install.spec` stays cheap for the CLI's parser.
"""
