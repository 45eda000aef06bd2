"""Every topic and state-store name idsync uses. Names are state: never change one casually.

Nothing else in the code base builds a topic or store name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Names:
    """Names for one idsync instance (``name`` from the config; several instances may share a cluster)."""

    instance: str

    def _t(self, suffix: str) -> str:
        return f"idsync.{self.instance}.{suffix}"

    # ---- topics
    def import_topic(self, connector: str) -> str:
        """Change records of one connector (key: anchor)."""
        return self._t(f"import.{connector}")

    def join_topic(self) -> str:
        """Join requests and index updates (key: join route)."""
        return self._t("sync.join")

    def links_topic(self) -> str:
        """Join outcomes back to staging (key: anchor, partitioned like the import topics)."""
        return self._t("sync.links")

    def mv_topic(self) -> str:
        """Contributions, disconnects and export results for the metaverse step (key: mv_id)."""
        return self._t("sync.mv")

    def refs_topic(self) -> str:
        """The reference table (compacted, key: route): DNs' mv_ids and metaverse objects' target DNs, read
        whole by every worker (``streams.reftable``)."""
        return self._t("sync.refs")

    def mv_changes_topic(self) -> str:
        """Public feed of metaverse changes (key: mv_id), contract ``schemas.records.MVChange``."""
        return self._t("mv.changes")

    def export_topic(self, connector: str) -> str:
        """Pending exports of one connector (key: mv_id)."""
        return self._t(f"export.{connector}")

    def errors_topic(self) -> str:
        """Per-object errors and dead letters (key: connector|anchor or step)."""
        return self._t("errors")

    def confirmations_topic(self) -> str:
        """Confirmed exports (key: mv_id)."""
        return self._t("export.confirmed")

    def watermarks_topic(self) -> str:
        """Stored delta/follow watermarks (compacted, key: connector), contract ``WatermarkRecord``."""
        return self._t("watermarks")

    def changelog_topic(self, stage: str) -> str:
        """Changelog of a stage's state store (compacted; key: state key, partitioned like the stage)."""
        return self._t(f"changelog.{stage}")

    # ---- consumer groups and state stores
    def group_id(self, stage: str | None = None) -> str:
        """Consumer group of one stage (``staging``, ``join``, ``metaverse``, ``export-<connector>``).

        Each stage consumes in its own group, so stages rebalance independently; without a stage, the
        app's group (faust's own, which subscribes to no topic)."""
        return f"idsync-{self.instance}" if stage is None else f"idsync-{self.instance}.{stage}"

    def store(self, stage: str) -> str:
        """Directory name of a stage's RocksDB store (``cs``, ``join``, ``mv``, ``export-ledger``)."""
        return f"{self.instance}-{stage}"
