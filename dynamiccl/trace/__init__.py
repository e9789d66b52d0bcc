"""Traces: what each rank does in a training step (schema, Parquet storage, building, summaries)."""

from dynamiccl.trace.builder import RankRecorder, TraceBuilder
from dynamiccl.trace.schema import SCHEMA_VERSION, Group, RankRole, TraceMeta
from dynamiccl.trace.store import Trace

__all__ = ["SCHEMA_VERSION", "Group", "RankRecorder", "RankRole", "Trace", "TraceBuilder", "TraceMeta"]
