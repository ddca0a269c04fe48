"""Campaigns: the funnel's DAG run embedded (one process) or step by step (Argo)."""

from __future__ import annotations

from htvs.campaign.config import CampaignConfig, load_campaign, parse_campaign
from htvs.campaign.graph import STAGES, Stage
from htvs.campaign.runner import STEPS, run_campaign, run_step, shard_list

__all__ = [
    "STAGES",
    "STEPS",
    "CampaignConfig",
    "Stage",
    "load_campaign",
    "parse_campaign",
    "run_campaign",
    "run_step",
    "shard_list",
]
