"""The Grafana dashboards of pg-connections-exporter as Python, split the way Grafana's
foundation-SDK examples are: shared panel builders, one module per row, one per dashboard.

- `common.py`: the variables' selectors and the thresholds (from alerts/thresholds.yaml);
- `panels.py`: the panel builders (`timeseries`, `stat`, `table`, ...) and the grid `Layout`;
- `rows/*.py`: one function per row of the overview (`saturation_rows(L)`, ...), each adding
  its panels to the layout;
- `overview.py`, `fleet.py`: each dashboard, its rows in the order shown.

dashboards/generate.py renders them to the JSON files beside it.
"""
