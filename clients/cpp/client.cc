// Calls tensorgate from C++ with stubs generated from protos/: server and model metadata,
// then add_sub with raw little-endian FP32 contents (INPUT0 = 0..15, INPUT1 = 2).
// usage: tensorgate_client HOST:PORT   Prints one JSON object; exits 1 on any RPC error.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "tensorgate/proto/grpc_service.grpc.pb.h"

namespace {

std::string FloatBytes(const std::vector<float>& values) {
  std::string bytes(values.size() * sizeof(float), '\0');
  std::memcpy(bytes.data(), values.data(), bytes.size());  // x86 and ARM are little-endian
  return bytes;
}

std::vector<float> Floats(const std::string& bytes) {
  std::vector<float> values(bytes.size() / sizeof(float));
  std::memcpy(values.data(), bytes.data(), values.size() * sizeof(float));
  return values;
}

template <typename Values>
std::string JsonArray(const Values& values) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < static_cast<size_t>(values.size()); ++i) out << (i ? "," : "") << values[i];
  out << "]";
  return out.str();
}

bool Check(const grpc::Status& status, const char* what) {
  if (status.ok()) return true;
  std::cerr << what << " failed: " << status.error_code() << " " << status.error_message() << "\n";
  return false;
}

void Prepare(grpc::ClientContext* context, const char* method) {
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  context->AddMetadata("x-request-id", std::string("cpp-") + method);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string address = argc > 1 ? argv[1] : "localhost:8001";
  auto stub = inference::GRPCInferenceService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));

  inference::ServerMetadataResponse server;
  {
    grpc::ClientContext context;
    Prepare(&context, "ServerMetadata");
    if (!Check(stub->ServerMetadata(&context, {}, &server), "ServerMetadata")) return 1;
  }
  inference::ModelMetadataResponse metadata;
  {
    grpc::ClientContext context;
    Prepare(&context, "ModelMetadata");
    inference::ModelMetadataRequest request;
    request.set_name("add_sub");
    if (!Check(stub->ModelMetadata(&context, request, &metadata), "ModelMetadata")) return 1;
  }
  inference::ModelInferResponse response;
  {
    grpc::ClientContext context;
    Prepare(&context, "ModelInfer");
    inference::ModelInferRequest request;
    request.set_model_name("add_sub");
    std::vector<float> input0(16), input1(16, 2.0f);
    for (int i = 0; i < 16; ++i) input0[i] = static_cast<float>(i);
    for (const char* name : {"INPUT0", "INPUT1"}) {
      auto* tensor = request.add_inputs();
      tensor->set_name(name);
      tensor->set_datatype("FP32");
      tensor->add_shape(1);
      tensor->add_shape(16);
    }
    request.add_raw_input_contents(FloatBytes(input0));
    request.add_raw_input_contents(FloatBytes(input1));
    if (!Check(stub->ModelInfer(&context, request, &response), "ModelInfer")) return 1;
  }

  std::cout << "{\"server\":\"" << server.name() << "\",\"inputs\":[";
  for (int i = 0; i < metadata.inputs_size(); ++i) {
    const auto& t = metadata.inputs(i);
    std::cout << (i ? "," : "") << "{\"name\":\"" << t.name() << "\",\"datatype\":\""
              << t.datatype() << "\",\"shape\":" << JsonArray(t.shape()) << "}";
  }
  std::cout << "],\"outputs\":{";
  for (int i = 0; i < response.outputs_size(); ++i) {
    const auto& t = response.outputs(i);
    std::cout << (i ? "," : "") << "\"" << t.name() << "\":{\"datatype\":\"" << t.datatype()
              << "\",\"shape\":" << JsonArray(t.shape())
              << ",\"data\":" << JsonArray(Floats(response.raw_output_contents(i))) << "}";
  }
  std::cout << "}}" << std::endl;
  return 0;
}
