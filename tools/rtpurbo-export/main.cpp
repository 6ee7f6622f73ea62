// rtpurbo-export: base Hugging Face checkpoint + head map + trained indexer -> converted-model directory
// (rtp/sparse/converted_model.h): base weights linked (or copied), config.json with RTP-LLM's headwise_config,
// rtpurbo.json and indexer.safetensors.
#include <cxxopts.hpp>
#include <iostream>
#include <nlohmann/json.hpp>

#include "main_guard.h"
#include "rtp/core/file_io.h"
#include "rtp/heads/head_profile.h"
#include "rtp/model/model_config.h"
#include "rtp/sparse/converted_model.h"
#include "rtp/sparse/headwise_config.h"
#include "rtp/sparse/indexer_checkpoint.h"

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// --heads accepts: an HDF5 head profile from rtpurbo-identify-heads (.h5/.hdf5), an indexer checkpoint (its
// stored head map), an rtpurbo.json, or a config.json carrying headwise_config (read per KV head, strictly).
rtp::sparse::HeadMap load_heads_arg(const std::string& path, const rtp::model::ModelConfig& cfg) {
  RTP_CHECK(rtp::file_exists(path), "--heads '", path, "' does not exist");
  if (ends_with(path, ".h5") || ends_with(path, ".hdf5"))
    return rtp::heads::head_map_from_profile(rtp::heads::load_head_profile(path));
  if (ends_with(path, ".safetensors")) {
    RTP_CHECK(rtp::sparse::is_indexer_checkpoint(path), "--heads '", path,
              "' is a safetensors file but not an indexer checkpoint (metadata format \"rtpurbo-indexer\")");
    return rtp::sparse::load_indexer_checkpoint(path).heads;
  }
  const nlohmann::json j = rtp::read_json_file(path);
  if (j.is_object() && j.contains("head_map")) return rtp::sparse::manifest_from_json(j, path).heads;
  if (j.is_object() && j.contains("headwise_config"))
    return rtp::sparse::read_headwise_config(j["headwise_config"], cfg, rtp::sparse::HeadwiseReadMode::kPerKvHead,
                                             path)
        .heads;
  RTP_THROW("--heads '", path, "': expected an HDF5 head profile (.h5), an indexer checkpoint (.safetensors), ",
            "an rtpurbo.json or a config.json with headwise_config");
}

}  // namespace

int main(int argc, char** argv) {
  return rtp::tools::run_guarded("rtpurbo-export", [&]() -> int {
    cxxopts::Options opts("rtpurbo-export", "Write a converted RTPurbo model directory.");
    // clang-format off
    opts.add_options()
      ("model", "base Hugging Face checkpoint directory", cxxopts::value<std::string>())
      ("heads", "head map: heads.h5 from rtpurbo-identify-heads (or an indexer checkpoint / rtpurbo.json)",
       cxxopts::value<std::string>())
      ("indexer", "indexer checkpoint (safetensors from rtpurbo-train --stage indexer); omit for heads only",
       cxxopts::value<std::string>())
      ("out", "output directory (built next to it, then renamed into place)", cxxopts::value<std::string>())
      ("copy-weights", "copy the base weights instead of symlinking them")
      ("top-p", "retrieval heads: indexer mass to keep (default: the indexer checkpoint's)", cxxopts::value<double>())
      ("window", "streaming heads: recent tokens kept, the query included", cxxopts::value<int64_t>())
      ("sink", "streaming heads: first tokens kept", cxxopts::value<int64_t>())
      ("block-size", "prefill selection block size", cxxopts::value<int64_t>())
      ("local-blocks", "retrieval heads: diagonal blocks always kept", cxxopts::value<int64_t>())
      ("dense-below", "prompts shorter than this run dense (RTP-LLM seqlen_threshold)", cxxopts::value<int64_t>())
      ("query-sub-blocks", "retrieval heads: pooled queries per query block in prefill selection, a power of two "
       "<= block size (default 1; more costs selection time, helps heads whose queries look at many places)",
       cxxopts::value<int64_t>())
      ("sub-block-aggregate", "retrieval heads: combine the block distributions of the sub-blocks and query heads "
       "of a query block by mean (default) or max (renormalised)", cxxopts::value<std::string>())
      ("h,help", "print this help");
    // clang-format on
    auto args = opts.parse(argc, argv);
    if (args.count("help")) {
      std::cout << opts.help() << "\n";
      return 0;
    }
    auto need = [&](const char* key) {
      if (!args.count(key)) throw rtp::Error(std::string("rtpurbo-export needs --") + key);
      return args[key].as<std::string>();
    };
    rtp::sparse::ExportOptions o;
    o.model_dir = need("model");
    o.out_dir = need("out");
    o.copy_weights = args.count("copy-weights") > 0;
    const std::string heads_path = need("heads");
    const auto cfg = rtp::model::load_model_config(o.model_dir + "/config.json");

    rtp::sparse::SparseSettings settings;
    rtp::sparse::Indexer indexer;
    std::string indexer_path;
    if (args.count("indexer")) {
      indexer_path = args["indexer"].as<std::string>();
      auto ck = rtp::sparse::load_indexer_checkpoint(indexer_path);
      settings = ck.settings;
      indexer = std::move(ck.indexer);
    }
    const rtp::sparse::HeadMap heads = load_heads_arg(heads_path, cfg);
    if (args.count("top-p")) settings.top_p = args["top-p"].as<double>();
    if (args.count("window")) settings.window = args["window"].as<int64_t>();
    if (args.count("sink")) settings.sink = args["sink"].as<int64_t>();
    if (args.count("block-size")) settings.block_size = args["block-size"].as<int64_t>();
    if (args.count("local-blocks")) settings.local_blocks = args["local-blocks"].as<int64_t>();
    if (args.count("dense-below")) settings.dense_below = args["dense-below"].as<int64_t>();
    if (args.count("query-sub-blocks")) settings.query_sub_blocks = args["query-sub-blocks"].as<int64_t>();
    if (args.count("sub-block-aggregate")) settings.sub_block_aggregate = args["sub-block-aggregate"].as<std::string>();
    RTP_CHECK(settings.sub_block_aggregate == "mean" || settings.sub_block_aggregate == "max",
              "--sub-block-aggregate must be mean or max, found ", settings.sub_block_aggregate);
    RTP_CHECK(settings.top_p > 0 && settings.top_p <= 1, "--top-p must be in (0, 1], found ", settings.top_p);
    RTP_CHECK(settings.window >= 1 && settings.sink >= 0 && settings.block_size >= 1 && settings.dense_below >= 0 &&
                  settings.local_blocks >= 0,
              "--window and --block-size must be >= 1, --sink, --local-blocks and --dense-below >= 0");
    RTP_CHECK(settings.query_sub_blocks >= 1 && (settings.query_sub_blocks & (settings.query_sub_blocks - 1)) == 0 &&
                  settings.query_sub_blocks <= settings.block_size,
              "--query-sub-blocks must be a power of two in [1, block size ", settings.block_size, "], found ",
              settings.query_sub_blocks);

    rtp::sparse::RtpurboManifest provenance;
    provenance.heads_source = heads_path;
    provenance.indexer_source = indexer_path;
    std::string cmd = "rtpurbo-export";
    for (int i = 1; i < argc; ++i) cmd += std::string(" ") + argv[i];
    provenance.created_by = cmd;
    rtp::sparse::export_converted(o, provenance, heads, settings, indexer);
    std::cout << "wrote " << o.out_dir << ": " << heads.count_retrieval() << " of "
              << heads.num_layers * heads.num_kv_heads << " KV heads retrieval, "
              << (indexer.heads().num_layers > 0 ? "with" : "without") << " indexer, weights "
              << (o.copy_weights ? "copied" : "linked") << "\n";
    return 0;
  });
}
