// RdmaEndpoint on the wire (schema/ferry.capnp RdmaEndpoint): Hello.rdma and
// HelloReply.rdma.
#pragma once

#include "common/rdma/rdma_transport.h"
#include "common/status.h"
#include "schema/ferry.capnp.h"

namespace ferry::rdma {

void EndpointToWire(const RdmaEndpoint& in, wire::RdmaEndpoint::Builder out);
// Malformed when the peer's description cannot be one (a GID not of 16
// bytes); the rest is checked where it is used (ConnectQueuePair, Start).
Status EndpointFromWire(wire::RdmaEndpoint::Reader in, RdmaEndpoint* out);

}  // namespace ferry::rdma
