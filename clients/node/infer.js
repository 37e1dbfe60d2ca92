// Calls tensorgate from Node.js: stubs are loaded at run time from the repository's protos
// (the same schema the server is generated from), tensors travel as raw little-endian bytes.
//
// usage: node infer.js HOST:PORT GOOGLEAPIS_PROTO_DIR
//   GOOGLEAPIS_PROTO_DIR holds google/api/annotations.proto (the python package
//   googleapis-common-protos ships it; the test passes its site-packages directory).
// Prints one JSON object: server name, model inputs, and add_sub's outputs for
// INPUT0 = 0..15, INPUT1 = 2.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [address = "localhost:8001", googleapis = process.env.GOOGLEAPIS_PROTO_DIR] =
  process.argv.slice(2);
const protos = path.resolve(__dirname, "..", "..", "protos");

const definition = protoLoader.loadSync("tensorgate/proto/grpc_service.proto", {
  includeDirs: [protos, googleapis].filter(Boolean),
  keepCase: true, // field names as in the .proto: raw_input_contents, model_name
  longs: Number, // shapes are int64
  defaults: true,
});
const inference = grpc.loadPackageDefinition(definition).inference;
const client = new inference.GRPCInferenceService(address, grpc.credentials.createInsecure());

function call(method, request) {
  const metadata = new grpc.Metadata();
  metadata.set("x-request-id", `node-${method}`);
  const deadline = new Date(Date.now() + 10000);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

function float32Bytes(values) {
  const buffer = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => buffer.writeFloatLE(v, i * 4));
  return buffer;
}

function float32Values(buffer) {
  const out = [];
  for (let offset = 0; offset < buffer.length; offset += 4) out.push(buffer.readFloatLE(offset));
  return out;
}

async function main() {
  const server = await call("ServerMetadata", {});
  const metadata = await call("ModelMetadata", { name: "add_sub" });
  const input0 = Array.from({ length: 16 }, (_, i) => i);
  const input1 = new Array(16).fill(2);
  const response = await call("ModelInfer", {
    model_name: "add_sub",
    inputs: [
      { name: "INPUT0", datatype: "FP32", shape: [1, 16] },
      { name: "INPUT1", datatype: "FP32", shape: [1, 16] },
    ],
    raw_input_contents: [float32Bytes(input0), float32Bytes(input1)],
  });
  const outputs = {};
  response.outputs.forEach((tensor, i) => {
    outputs[tensor.name] = {
      datatype: tensor.datatype,
      shape: tensor.shape,
      data: float32Values(response.raw_output_contents[i]),
    };
  });
  console.log(
    JSON.stringify({
      server: server.name,
      inputs: metadata.inputs.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape })),
      outputs,
    }),
  );
}

main()
  .catch((error) => {
    console.error(`tensorgate call failed: ${error.code} ${error.details || error.message}`);
    process.exitCode = 1;
  })
  .finally(() => client.close());
