"""Local AWS emulator for the end-to-end tests and the demo.

moto's server (pinned in requirements.txt) runs in this process on 127.0.0.1, extended so that it
behaves like AWS where this project depends on it:

* SSM plays the Windows side. moto runs no document: it marks every invocation Success at once.
  Here each invocation of a VSS snapshot document on a simulated instance follows a timeline
  (InvocationDoesNotExist for a moment, Pending/InProgress, then a final status) and, when it
  "runs", creates one EBS snapshot per attached volume with the document's tags plus
  `AppConsistent` and `Device`, as AWSEC2-CreateVssSnapshot does.
* SSM's view of the fleet: DescribeInstanceInformation and ListCommandInvocations, which moto
  does not implement, answer from the simulated agents; ListCommands gets the filters, paging
  and per-command status moto leaves out.
* PutParameter without Overwrite is made atomic, as it is in AWS.
* DescribeSnapshots honours MaxResults and NextToken (moto answers everything in one page), and
  a DescribeInstances page holds at most MaxResults instances (moto counts reservations), so a
  paginated read costs the calls, and holds the memory, that it does against AWS.
* SendMessage no longer counts every message of the queue for each message sent (moto builds
  all the queue's attributes to read one), which made sending 10,000 messages quadratic.
* A DynamoDB Query of a table reads the partition of its key (moto sorts every item of the
  table for each Query: a thousand Queries over a 50,000-item catalog took minutes).
* A resource's tags are looked up by its id (moto scans every tag of the region for each
  resource, which makes a tag-filtered describe quadratic: minutes with 100,000 snapshots).
* moto's SendCommand sends to every instance when `Targets` is empty; here it sends to exactly
  the given InstanceIds, as AWS does.

The Rust code under test only talks AWS APIs over HTTP and sees what AWS would say. The harness
steers the simulation through plain HTTP under /_sim/ on the same port:

  POST /_sim/instances  {"i-...": {"ssm": "online"|"offline"|"unmanaged",
                                    "agent_version": "3.3.40.0",
                                    "outcome": "success"|"vss_failure"|"no_ebs"|"undeliverable",
                                    "lag": 0.2, "duration": 0.3, "delivery_timeout": 2.0,
                                    "freeze_failures": 1, "windows_version": "10.0.20348",
                                    "dynamic_disks": 0, "cluster": "SQLCLU"|null,
                                    "cluster_disks": 2, "owns_cluster_disks": true}}
                        (the readiness probe, the account's document printing `CSPROBE`,
                        answers from these and from `outcome`: language mode, a failed
                        writer, AwsVssComponents missing)
  POST /_sim/ebs        {"pending_seconds": 2.0, "copy_refusals": {"us-west-2": 3},
                         "volume_seconds": 1.5, "instance_seconds": 1.5}: new snapshots and
                        copies stay pending that long; the next N copies into a region answer
                        ResourceLimitExceeded; new volumes stay `creating` (and cannot be
                        attached) that long; instances stay `stopping`/`pending` that long;
                        "archive_seconds": 0.5, "restore_seconds": 2.0: how long archiving
                        and restoring from the archive tier take
  POST /_sim/blocks     {"region", "snapshot_id"}: what the snapshot holds in the model of its
                        volume the EBS direct APIs answer from (each written block's version)
  POST /_sim/age        {"region": "us-east-1", "snapshot_ids": ["snap-..."], "hours": 30}: those
                        snapshots were started that many hours earlier (time passing, for RPO)
  POST /_sim/history    {"region", "managed_by", "instance_ids", "sets", "hours_apart",
                         "newest_hours", "copy_region"?}: earlier nightly runs' consistent sets
                        of these instances (one snapshot per attached volume, tagged as the
                        function tags them; copies in copy_region), the newest `newest_hours`
                        old; answers how many snapshots it made and the sets (ids, volumes,
                        devices, copies), which the harness records in the catalog
  POST /_sim/landing-zone {"region"}: the default VPC with its internet gateway and default
                        route (moto's has only the local route), and the fleet's instance
                        profile `vss-instance`
  GET  /_sim/invocations   every simulated invocation (command id, instance, document, status)
  POST /_sim/reset         forget the simulation (moto's own state: POST /moto-api/reset)

Usage: python server.py [--port 0]; prints "READY <port>" on stdout once it listens.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from werkzeug.serving import make_server

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import vss_emulator  # noqa: E402 - after the path that finds it
from vss_emulator.model import SIM  # noqa: E402
from vss_emulator.routes import App, QuietHandler  # noqa: E402


def ticker(stop: threading.Event) -> None:
    while not stop.wait(0.05):
        try:
            SIM.tick()
        except Exception as err:  # noqa: BLE001 - keep simulating, but say why
            print(f"simulation error: {err!r}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the emulator only listens on loopback")
    vss_emulator.install()
    server = make_server(
        args.host, args.port, App(), threaded=True, request_handler=QuietHandler
    )
    stop = threading.Event()
    threading.Thread(target=ticker, args=(stop,), daemon=True).start()
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        stop.set()


if __name__ == "__main__":
    main()
