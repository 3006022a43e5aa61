"""soakd's Grafana dashboards as Python: grafana/generate.py writes them to grafana/dashboards/.

- queries.py: data source, recorded series, label filters and shared PromQL pieces;
- panels.py: Grafana's JSON model (targets, panels, rows, dashboards, template variables);
- stability.py, power_thermal.py, fleet.py: one dashboard each.
"""
