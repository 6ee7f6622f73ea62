#pragma once
// --dtype and --device for the tools that link torch (tool_args.h stays torch-free for the tokenizer tools).
// A value the library parsers do not know is a command-line mistake (UsageError, exit 2) naming the flag; a device
// that is spelled right but absent on this machine ("cuda" without a GPU) is not: it stays an rtp::Error (exit 1),
// with the flag named.
#include <c10/util/Exception.h>
#include <torch/types.h>

#include <string>

#include "rtp/torch/run_context.h"
#include "tool_args.h"

namespace rtp::tools {

// "float32"/"fp32", "bfloat16"/"bf16", "float16"/"fp16" (rtp::parse_dtype); anything else: "--dtype 'int8': unknown
// dtype 'int8': expected float32, bfloat16 or float16".
inline torch::ScalarType dtype_arg(const std::string& text, const std::string& name = "dtype") {
  return flag_value(name, text, [](const std::string& t) { return rtp::parse_dtype(t); });
}

// Whether `text` is a device name at all ("cpu", "cuda", "cuda:1", "auto"): the spelling only.
inline bool is_device_spelling(const std::string& text) {
  if (text == "auto") return true;
  try {
    torch::Device d(text);
    return d.is_cpu() || d.is_cuda();
  } catch (const c10::Error&) {
    return false;
  }
}

// rtp::parse_device of --name's value: a misspelling is a UsageError, a CUDA device on a machine without one an
// rtp::Error naming the flag.
inline torch::Device device_arg(const std::string& text, const std::string& name = "device") {
  if (!is_device_spelling(text))
    throw UsageError("--" + name + " '" + text + "' is not valid: expected cpu, cuda, cuda:N or auto");
  try {
    return rtp::parse_device(text);
  } catch (const rtp::Error& e) {
    throw rtp::Error(rtp::str_cat("--", name, " '", text, "': ", e.what()));
  }
}

}  // namespace rtp::tools
