"""gRPC wiring of the Fan-Out Service's operator API."""

from __future__ import annotations

import resource
from typing import Any

from chatmesh.v1 import fanout_service_pb2 as pb, fanout_service_pb2_grpc as pb_grpc
from mesh.bus.subjects import Subjects
from services.fanout.service import TABLE_BYTES, Fanout

__all__ = ["FanoutServicer", "rss_bytes"]


def rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class FanoutServicer(pb_grpc.FanoutServiceServicer):
    """GetRoute and GetStats over the live table."""

    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout

    async def GetRoute(self, request: pb.GetRouteRequest, context: Any) -> pb.GetRouteResponse:
        routes = [
            pb.InstanceRoute(instance_id=i.instance_id, region=i.region, delivery_subject=i.subject)
            for i in self.fanout.table.route_of(request.user_id)
        ]
        # Every-region mode: the other regions' instances, as overheard (empty otherwise).
        routes += [
            pb.InstanceRoute(
                instance_id=r.instance_id,
                region=r.region,
                delivery_subject=Subjects.delivery(r.region, r.instance_id),
            )
            for r in self.fanout.remote.where(request.user_id)
        ]
        routes.sort(key=lambda r: r.instance_id)
        return pb.GetRouteResponse(user_id=request.user_id, instances=routes)

    async def GetStats(self, request: pb.GetStatsRequest, context: Any) -> pb.GetStatsResponse:
        table = self.fanout.table
        by_region: dict[str, int] = {}
        for inst in table.instances():
            by_region[inst.region] = by_region.get(inst.region, 0) + 1
        table_bytes = table.estimated_bytes()
        TABLE_BYTES.set(table_bytes)
        return pb.GetStatsResponse(
            routed_users=table.routed_users,
            routes=table.route_count,
            instances=len(table.instances()),
            instances_by_region=by_region,
            channels=table.channel_count,
            memberships=table.memberships,
            table_bytes=table_bytes,
            events_processed=self.fanout.events_processed,
            deliveries_published=self.fanout.deliveries,
            deliveries_by_region=dict(self.fanout.deliveries_by_region),
            rss_bytes=rss_bytes(),
        )
