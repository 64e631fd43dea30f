#!/usr/bin/env node
// A modelyard client in Node.js, written from the .proto files alone: it uploads
// a CSV, trains a model of one column, watches the job, reads it back and scores
// rows with the new model. Then it makes one call that fails, to show how an
// error's google.rpc.Status and ErrorInfo are decoded.
//
//   MODELYARD_DATASET_ADDRESS=127.0.0.1:50051 MODELYARD_JOBS_ADDRESS=127.0.0.1:50052 \
//   MODELYARD_TRAINER_ADDRESS=127.0.0.1:50053 MODELYARD_SERVICE_TOKEN=... \
//   node client.js ../../devstack/samples/iris.csv species
//
// Each step prints one JSON line on stdout; progress goes to stderr. Exit code 0
// when the whole path worked. See docs/clients.md for what it illustrates.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

// The repository's protos: our contracts, and the vendored google/api + google/rpc.
const PROTOS = path.resolve(__dirname, "..", "..", "protos");
const INCLUDE_DIRS = [PROTOS, path.join(PROTOS, "third_party", "googleapis")];

// How messages look in JavaScript. Every choice here is one a client author makes.
const LOADER_OPTIONS = {
  keepCase: false, // fields in lowerCamelCase: jobId, targetColumn
  longs: String, // int64 as strings ("150"): a JS number loses precision past 2^53
  enums: String, // enum values by name ("SUCCEEDED"), as the REST API writes them
  defaults: true, // unset fields present with their default value
  oneofs: true, // a oneof's set member is named by a virtual field (e.g. `payload`)
  includeDirs: INCLUDE_DIRS,
};

const CHUNK_BYTES = 256 * 1024;

function settings() {
  const env = process.env;
  const required = (name) => {
    if (!env[name]) throw new Error(`${name} is not set`);
    return env[name];
  };
  return {
    dataset: required("MODELYARD_DATASET_ADDRESS"),
    jobs: required("MODELYARD_JOBS_ADDRESS"),
    trainer: required("MODELYARD_TRAINER_ADDRESS"),
    token: required("MODELYARD_SERVICE_TOKEN"),
    csv: process.argv[2] || path.join(__dirname, "..", "..", "devstack", "samples", "iris.csv"),
    target: process.argv[3] || "species",
    watchSeconds: Number(env.MODELYARD_WATCH_SECONDS || 300),
  };
}

function loadServices() {
  const definition = protoLoader.loadSync(
    [
      "modelyard/dataset/v1/dataset_service.proto",
      "modelyard/jobs/v1/jobs_service.proto",
      "modelyard/training/v1/trainer_service.proto",
    ],
    LOADER_OPTIONS,
  );
  const loaded = grpc.loadPackageDefinition(definition);
  return {
    DatasetService: loaded.modelyard.dataset.v1.DatasetService,
    JobsService: loaded.modelyard.jobs.v1.JobsService,
    TrainerService: loaded.modelyard.training.v1.TrainerService,
  };
}

// -- calls --------------------------------------------------------------------------

// Every call carries the bearer token and a deadline.
function callOptions(seconds) {
  return { deadline: Date.now() + seconds * 1000 };
}

function authMetadata(token) {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  return metadata;
}

function unary(client, method, request, metadata, seconds = 30) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, callOptions(seconds), (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// UploadDataset is a client stream: a header message, then the file in chunks.
function upload(client, metadata, file) {
  return new Promise((resolve, reject) => {
    const call = client.UploadDataset(metadata, callOptions(600), (error, dataset) =>
      error ? reject(error) : resolve(dataset),
    );
    call.write({ header: { displayName: path.basename(file, ".csv") } });
    const bytes = fs.createReadStream(file, { highWaterMark: CHUNK_BYTES });
    bytes.on("data", (chunk) => {
      if (!call.write({ chunk })) {
        bytes.pause(); // back-pressure: wait until gRPC has sent what it holds
        call.once("drain", () => bytes.resume());
      }
    });
    bytes.on("end", () => call.end());
    bytes.on("error", (error) => {
      call.cancel();
      reject(error);
    });
  });
}

// WatchTrainingJob is a server stream: the job now, then every change, ending after
// a final state. The last message is the job as stored.
function watch(client, metadata, jobId, seconds) {
  return new Promise((resolve, reject) => {
    let last = null;
    const call = client.WatchTrainingJob({ jobId }, metadata, callOptions(seconds));
    call.on("data", ({ trainingJob }) => {
      last = trainingJob;
      const progress = trainingJob.progress || {};
      process.stderr.write(
        `job ${jobId}: ${trainingJob.state} ${progress.iteration || 0}/${progress.totalIterations || 0}\n`,
      );
    });
    call.on("error", reject);
    call.on("end", () => resolve(last));
  });
}

// -- google.protobuf.Struct: rows for Predict ------------------------------------------

// proto-loader hands Struct and Value over as messages, not as plain JSON: a row
// {"a": 1} is {fields: {a: {numberValue: 1}}}.
function toValue(value) {
  if (value === null || value === undefined) return { nullValue: "NULL_VALUE" };
  if (typeof value === "number") return { numberValue: value };
  if (typeof value === "boolean") return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  if (typeof value === "object") return { structValue: toStruct(value) };
  return { stringValue: String(value) };
}

function toStruct(object) {
  return { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, toValue(v)])) };
}

function fromValue(value) {
  switch (value.kind) {
    case "numberValue":
      return value.numberValue;
    case "stringValue":
      return value.stringValue;
    case "boolValue":
      return value.boolValue;
    case "structValue":
      return Object.fromEntries(
        Object.entries(value.structValue.fields).map(([k, v]) => [k, fromValue(v)]),
      );
    case "listValue":
      return value.listValue.values.map(fromValue);
    default:
      return null;
  }
}

// A few rows of the CSV, without the target column (a plain CSV without quoting).
function sampleRows(file, target, count) {
  const [header, ...lines] = fs.readFileSync(file, "utf8").trim().split(/\r?\n/);
  const names = header.split(",");
  return lines.slice(0, count).map((line) => {
    const row = {};
    line.split(",").forEach((text, index) => {
      if (names[index] === target) return;
      row[names[index]] = text !== "" && !Number.isNaN(Number(text)) ? Number(text) : text;
    });
    return row;
  });
}

// -- errors: grpc-status-details-bin ----------------------------------------------------

// The binary trailer `grpc-status-details-bin` holds a google.rpc.Status whose
// details include a google.rpc.ErrorInfo: a stable `reason` to match on, and
// metadata such as the id that was not found.
const errorTypes = (() => {
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => {
    for (const dir of INCLUDE_DIRS) {
      const candidate = path.join(dir, target);
      if (fs.existsSync(candidate)) return candidate;
    }
    return target; // google/protobuf/*.proto: protobufjs has them built in
  };
  root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"]);
  return {
    Status: root.lookupType("google.rpc.Status"),
    ErrorInfo: root.lookupType("google.rpc.ErrorInfo"),
  };
})();

function decodeError(error) {
  const [details] = error.metadata ? error.metadata.get("grpc-status-details-bin") : [];
  const decoded = { code: grpc.status[error.code], message: error.details };
  if (!details) return decoded;
  const status = errorTypes.Status.decode(details);
  for (const any of status.details) {
    if (any.type_url === "type.googleapis.com/google.rpc.ErrorInfo") {
      const info = errorTypes.ErrorInfo.decode(any.value);
      decoded.reason = info.reason;
      decoded.domain = info.domain;
      decoded.metadata = { ...info.metadata };
    }
  }
  return decoded;
}

// -- the path ---------------------------------------------------------------------------

function report(step, fields) {
  process.stdout.write(JSON.stringify({ step, ...fields }) + "\n");
}

async function main() {
  const config = settings();
  const services = loadServices();
  const metadata = authMetadata(config.token);
  const credentials = grpc.credentials.createInsecure();
  const datasets = new services.DatasetService(config.dataset, credentials);
  const jobs = new services.JobsService(config.jobs, credentials);
  const trainer = new services.TrainerService(config.trainer, credentials);
  try {
    const dataset = await upload(datasets, metadata, config.csv);
    report("upload", {
      datasetId: dataset.datasetId,
      state: dataset.state,
      rowCount: dataset.rowCount, // int64: a string
      columns: dataset.columns.map((column) => `${column.name}:${column.dataType}`),
    });

    const created = await unary(jobs, "CreateTrainingJob", {
      datasetId: dataset.datasetId,
      targetColumn: config.target,
      task: "AUTO",
      requestId: `node-example-${dataset.datasetId}`, // a retry returns the same job
    }, metadata);
    report("train", { jobId: created.jobId, state: created.state });

    const watched = await watch(jobs, metadata, created.jobId, config.watchSeconds);
    report("watch", { state: watched.state, metrics: watched.metrics });

    const job = await unary(jobs, "GetTrainingJob", { jobId: created.jobId }, metadata);
    report("get", {
      state: job.state,
      metrics: job.metrics,
      model: job.mlflow.registeredModelName,
      version: job.mlflow.registeredModelVersion, // int64: a string
      task: job.taskDetection.task,
    });
    if (job.state !== "SUCCEEDED") throw new Error(`job ended ${job.state}`);

    const rows = sampleRows(config.csv, config.target, 3);
    const predicted = await unary(trainer, "Predict", {
      modelName: job.mlflow.registeredModelName,
      version: job.mlflow.registeredModelVersion, // the oneof version_selector
      rows: rows.map(toStruct),
    }, metadata);
    report("predict", {
      modelVersion: predicted.modelVersion,
      classNames: predicted.classNames,
      predictions: predicted.predictions.map((p) => ({
        value: fromValue(p.value),
        probabilities: p.probabilities,
      })),
    });

    try {
      await unary(jobs, "GetTrainingJob", { jobId: "no-such-job" }, metadata);
      throw new Error("a job that does not exist was found");
    } catch (error) {
      if (error.code === undefined) throw error;
      report("error", decodeError(error));
    }
  } finally {
    datasets.close();
    jobs.close();
    trainer.close();
  }
}

main().catch((error) => {
  const decoded = error.code !== undefined ? decodeError(error) : { message: error.message };
  process.stderr.write(`failed: ${JSON.stringify(decoded)}\n`);
  process.exitCode = 1;
});
