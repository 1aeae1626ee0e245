"""deploy/monitoring: the Grafana dashboard and the Prometheus scrape configuration refer to what the servers
expose."""

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

from core import metrics

MONITORING = Path(__file__).parent.parent / "deploy" / "monitoring"


def exposed_names() -> set[str]:
    """Every sample name crawlcoin's metrics produce (counters' _total, histograms' _bucket/_count/_sum)."""
    assert metrics.JOBS_FINISHED  # the definitions are registered on import
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("crawlcoin_"):
            names.add(family.name)
            names.update(f"{family.name}{suffix}" for suffix in ("_total", "_bucket", "_count", "_sum"))
    return names


def test_the_dashboard_parses_and_names_only_metrics_that_exist() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bcrawlcoin_[a-z_]+", e)}
    exposed = exposed_names()
    assert used and used <= exposed, f"not exposed by any server: {sorted(used - exposed)}"
    # every family the servers expose is on the dashboard
    families = {n for n in exposed if not n.endswith(("_total", "_bucket", "_count", "_sum"))}
    shown = {n.removesuffix("_total").removesuffix("_bucket") for n in used}
    assert families <= shown, f"not on the dashboard: {sorted(families - shown)}"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_scrape_config_covers_every_service() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    ports = {
        job["dns_sd_configs"][0]["names"][0]: job["dns_sd_configs"][0]["port"]
        for job in jobs.values()
        if "dns_sd_configs" in job
    }
    assert ports == {"api": 8600, "mining": 8601, "results": 8603, "worker": 8604}
    compose = yaml.safe_load((MONITORING.parent / "compose.yaml").read_text())
    assert compose["services"]["worker"]["environment"]["CRAWLCOIN_WORKER_METRICS_PORT"] == "8604"
    assert jobs["crawlcoin-up"]["file_sd_configs"][0]["files"][0].endswith("metrics-targets.json")
