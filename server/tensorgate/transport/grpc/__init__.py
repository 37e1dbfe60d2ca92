"""The gRPC transport: servicers, method handlers and the grpc.aio server."""
