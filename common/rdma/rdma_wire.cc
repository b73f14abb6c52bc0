#include "common/rdma/rdma_wire.h"

#include <cstring>

namespace ferry::rdma {

void EndpointToWire(const RdmaEndpoint& in, wire::RdmaEndpoint::Builder out) {
  out.setGid(kj::arrayPtr(in.gid.data(), in.gid.size()));
  out.setLid(in.lid);
  out.setQpNumber(in.qp_number);
  out.setPacketSequence(in.packet_sequence);
  out.setMtu(in.mtu);
  out.setRingAddress(in.ring_address);
  out.setRingKey(in.ring_key);
  out.setRingBytes(in.ring_bytes);
  out.setReceiveDepth(in.receive_depth);
  out.setSmallMessageBytes(in.small_message_bytes);
  out.setDevice(in.device);
}

Status EndpointFromWire(wire::RdmaEndpoint::Reader in, RdmaEndpoint* out) {
  if (in.getGid().size() != out->gid.size()) {
    return Status::Malformed("an RDMA endpoint's GID has " + std::to_string(in.getGid().size()) +
                             " bytes, not 16");
  }
  std::memcpy(out->gid.data(), in.getGid().begin(), out->gid.size());
  out->lid = in.getLid();
  out->qp_number = in.getQpNumber();
  out->packet_sequence = in.getPacketSequence();
  out->mtu = in.getMtu();
  out->ring_address = in.getRingAddress();
  out->ring_key = in.getRingKey();
  out->ring_bytes = in.getRingBytes();
  out->receive_depth = in.getReceiveDepth();
  out->small_message_bytes = in.getSmallMessageBytes();
  out->device = in.getDevice().cStr();
  return Status::Ok();
}

}  // namespace ferry::rdma
