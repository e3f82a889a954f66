"""The packet bus: MediaPacket, its wire format, ZeroMQ sockets under trio, the proxy."""
