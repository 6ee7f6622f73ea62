// rtpurbo-export: base Hugging Face checkpoint + head map + trained indexer -> converted-model directory
// (rtp/sparse/converted_model.h): base weights linked (or copied), config.json with RTP-LLM's headwise_config,
// rtpurbo.json and indexer.safetensors.
#include <cstdio>
#include <cxxopts.hpp>
#include <iostream>
#include <optional>
#include <nlohmann/json.hpp>

#include "main_guard.h"
#include "tool_args.h"
#include "rtp/core/file_io.h"
#include "rtp/heads/head_profile.h"
#include "rtp/kernels/sparse_attention_params.h"
#include "rtp/model/model_config.h"
#include "rtp/sparse/converted_model.h"
#include "rtp/sparse/headwise_config.h"
#include "rtp/sparse/indexer_checkpoint.h"

namespace {

// RTP-LLM's default seqlen_threshold: prompts shorter than this run dense.
constexpr int64_t kDenseBelowHint = 16384;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

struct HeadsArg {
  rtp::sparse::HeadMap heads;
  // The sparse settings the file carries (indexer checkpoint, rtpurbo.json, headwise_config's sink/window/
  // threshold); a head profile carries none.
  std::optional<rtp::sparse::SparseSettings> settings;
  int64_t profile_window = 0, profile_sink = -1;  // a head profile's calibration settings
};

// --heads accepts: an HDF5 head profile from rtpurbo-identify-heads (.h5/.hdf5), an indexer checkpoint (its
// stored head map), an rtpurbo.json, or a config.json carrying headwise_config (read per KV head, strictly).
const char* const kHeadsExpected =
    "an HDF5 head profile (.h5) from rtpurbo-identify-heads, an indexer checkpoint (.safetensors), an rtpurbo.json "
    "or a config.json with headwise_config";

HeadsArg load_heads_arg(const std::string& path, const rtp::model::ModelConfig& cfg) {
  rtp::require_input_file(path, "--heads", kHeadsExpected);
  HeadsArg out;
  if (ends_with(path, ".h5") || ends_with(path, ".hdf5")) {
    const auto profile = rtp::heads::load_head_profile(path);
    out.heads = rtp::heads::head_map_from_profile(profile);
    out.profile_window = profile.settings.window;
    out.profile_sink = profile.settings.sink;
    return out;
  }
  if (ends_with(path, ".safetensors")) {
    RTP_CHECK(rtp::sparse::is_indexer_checkpoint(path), "--heads '", path,
              "' is a safetensors file but not an indexer checkpoint (metadata format \"rtpurbo-indexer\")");
    auto ck = rtp::sparse::load_indexer_checkpoint(path);
    out.heads = ck.heads;
    out.settings = ck.settings;
    return out;
  }
  nlohmann::json j;
  try {
    j = rtp::read_json_file(path);
  } catch (const rtp::Error&) {
    // Not JSON (an .svg, a text file): what --heads takes, not the JSON parser's complaint.
    RTP_THROW("--heads '", path, "' is not a head map file: expected ", kHeadsExpected, " (it is not JSON)");
  }
  if (j.is_object() && j.contains("head_map")) {
    const auto m = rtp::sparse::manifest_from_json(j, path);
    out.heads = m.heads;
    out.settings = m.settings;
    return out;
  }
  if (j.is_object() && j.contains("headwise_config")) {
    const auto hw = rtp::sparse::read_headwise_config(j["headwise_config"], cfg,
                                                      rtp::sparse::HeadwiseReadMode::kPerKvHead, path);
    out.heads = hw.heads;
    out.settings = rtp::sparse::settings_from_headwise(hw);
    return out;
  }
  RTP_THROW("--heads '", path, "' is not a head map file: expected ", kHeadsExpected,
            " (it is JSON without head_map or headwise_config)");
}

}  // namespace

int main(int argc, char** argv) {
  return rtp::tools::run_guarded("rtpurbo-export", [&]() -> int {
    const rtp::sparse::SparseSettings defaults;
    const auto dflt = [](auto v) { return rtp::str_cat("; default: the indexer checkpoint's (else the --heads file's) ",
                                                       "or ", v); };
    cxxopts::Options opts("rtpurbo-export",
                          "Write a converted RTPurbo model directory. The selection settings come from --indexer, "
                          "else from --heads when it carries them (indexer checkpoint, rtpurbo.json, config.json), "
                          "else the defaults below; flags override them.");
    // clang-format off
    opts.add_options()
      ("model", "base Hugging Face checkpoint directory", cxxopts::value<std::string>())
      ("heads", "head map: heads.h5 from rtpurbo-identify-heads (or an indexer checkpoint / rtpurbo.json)",
       cxxopts::value<std::string>())
      ("indexer", "indexer checkpoint (safetensors from rtpurbo-train --stage indexer); omit for heads only",
       cxxopts::value<std::string>())
      ("out", "output directory (built next to it, then renamed into place)", cxxopts::value<std::string>())
      ("copy-weights", "copy the base weights instead of symlinking them")
      ("top-p", "retrieval heads: indexer mass to keep, in (0, 1]" + dflt(defaults.top_p), cxxopts::value<std::string>())
      ("window", "streaming heads: recent tokens kept, the query included" + dflt(defaults.window),
       cxxopts::value<std::string>())
      ("sink", "streaming heads: first tokens kept" + dflt(defaults.sink), cxxopts::value<std::string>())
      ("block-size", "prefill selection block size, 64 or 128" + dflt(defaults.block_size),
       cxxopts::value<std::string>())
      ("local-blocks", "retrieval heads: diagonal blocks always kept" + dflt(defaults.local_blocks),
       cxxopts::value<std::string>())
      ("dense-below", "prompts shorter than this run dense (RTP-LLM seqlen_threshold)" + dflt(defaults.dense_below),
       cxxopts::value<std::string>())
      ("query-sub-blocks", "retrieval heads: pooled queries per query block in prefill selection, a power of two "
       "<= block size (more costs selection time, helps heads whose queries look at many places)" +
       dflt(defaults.query_sub_blocks), cxxopts::value<std::string>())
      ("sub-block-aggregate", "retrieval heads: combine the block distributions of the sub-blocks and query heads "
       "of a query block by mean or max (renormalised)" + dflt(defaults.sub_block_aggregate),
       cxxopts::value<std::string>())
      ("h,help", "print this help");
    // clang-format on
    auto args = rtp::tools::parse_strict(opts, argc, argv);
    if (args.count("help")) {
      std::cout << opts.help() << "\n";
      return 0;
    }
    auto need = [&](const char* key) { return rtp::tools::required_arg(args, key); };
    rtp::sparse::ExportOptions o;
    o.model_dir = need("model");
    o.out_dir = need("out");
    o.copy_weights = args.count("copy-weights") > 0;
    const std::string heads_path = need("heads");
    using rtp::config::at_least;
    using rtp::config::range;
    // Flags first: a typo fails before any file is read.
    const auto top_p = rtp::tools::optional_number_arg(args, "top-p", range(0, 1, "(]"));
    const auto window = rtp::tools::optional_integer_arg(args, "window", at_least(1));
    const auto sink = rtp::tools::optional_integer_arg(args, "sink", at_least(0));
    const auto block_size = rtp::tools::optional_integer_arg(args, "block-size", rtp::config::one_of({"64", "128"}));
    // The diagonal block holds each query's own and nearest keys: without it a query could select no key at all.
    const auto local_blocks = rtp::tools::optional_integer_arg(args, "local-blocks", at_least(1));
    const auto dense_below = rtp::tools::optional_integer_arg(args, "dense-below", at_least(0));
    const auto query_sub_blocks = rtp::tools::optional_integer_arg(args, "query-sub-blocks", at_least(1));
    if (query_sub_blocks && (*query_sub_blocks & (*query_sub_blocks - 1)) != 0)
      throw rtp::tools::UsageError(rtp::str_cat("--query-sub-blocks '", *query_sub_blocks,
                                                "' is not valid: expected a power of two (1, 2, 4, ...)"));
    if (query_sub_blocks && block_size && *query_sub_blocks > *block_size)
      throw rtp::tools::UsageError(rtp::str_cat("--query-sub-blocks ", *query_sub_blocks, " exceeds --block-size ",
                                                *block_size, ": the sub-blocks tile a query block"));
    const std::optional<std::string> sub_block_aggregate =
        args.count("sub-block-aggregate")
            ? std::optional<std::string>(rtp::tools::choice_arg(args, "sub-block-aggregate", {"mean", "max"}))
            : std::nullopt;
    rtp::require_directory(o.model_dir, "--model", "(the base model's Hugging Face checkpoint directory)");
    const auto cfg = rtp::model::load_model_config(o.model_dir + "/config.json");

    rtp::sparse::SparseSettings settings;
    std::string settings_from = "defaults";
    rtp::sparse::Indexer indexer;
    std::string indexer_path;
    if (args.count("indexer")) {
      indexer_path = args["indexer"].as<std::string>();
      // A training run's out_dir for its indexer file is the likely slip: name the file it holds.
      const std::string inside = indexer_path + "/indexer.safetensors";
      if (rtp::directory_exists(indexer_path) && rtp::file_exists(inside))
        RTP_THROW("--indexer '", indexer_path, "' is a directory; its indexer checkpoint is '", inside,
                  "': pass that file");
      rtp::require_input_file(indexer_path, "--indexer",
                              "an indexer checkpoint (indexer.safetensors in rtpurbo-train's out_dir)");
      auto ck = rtp::sparse::load_indexer_checkpoint(indexer_path);
      settings = ck.settings;
      settings_from = "--indexer " + indexer_path;
      indexer = std::move(ck.indexer);
    }
    const HeadsArg heads_arg = load_heads_arg(heads_path, cfg);
    const rtp::sparse::HeadMap& heads = heads_arg.heads;
    if (!args.count("indexer") && heads_arg.settings) {
      settings = *heads_arg.settings;
      settings_from = "--heads " + heads_path;
    }
    if (top_p) settings.top_p = *top_p;
    if (window) settings.window = *window;
    if (sink) settings.sink = *sink;
    if (block_size) settings.block_size = *block_size;
    if (local_blocks) settings.local_blocks = *local_blocks;
    if (dense_below) settings.dense_below = *dense_below;
    if (query_sub_blocks) settings.query_sub_blocks = *query_sub_blocks;
    if (sub_block_aggregate) settings.sub_block_aggregate = *sub_block_aggregate;
    RTP_CHECK(settings.sub_block_aggregate == "mean" || settings.sub_block_aggregate == "max",
              "--sub-block-aggregate must be mean or max, found ", settings.sub_block_aggregate);
    RTP_CHECK(settings.top_p > 0 && settings.top_p <= 1, "--top-p must be in (0, 1], found ", settings.top_p);
    RTP_CHECK(settings.window >= 1 && settings.sink >= 0 && settings.dense_below >= 0 && settings.local_blocks >= 1,
              "--window and --local-blocks must be >= 1, --sink and --dense-below >= 0 (settings from ", settings_from,
              ": window ", settings.window, ", local_blocks ", settings.local_blocks, ", sink ", settings.sink,
              ", dense_below ", settings.dense_below, ")");
    RTP_CHECK(rtp::kernels::block_size_supported(settings.block_size), "the block size ", settings.block_size,
              " (from ", settings_from, ") is not one the kernels tile: give --block-size 64 or 128");
    // A flag against the block size another source set is still the command line's mistake.
    if (query_sub_blocks && *query_sub_blocks > settings.block_size)
      throw rtp::tools::UsageError(rtp::str_cat("--query-sub-blocks ", *query_sub_blocks, " exceeds the block size ",
                                                settings.block_size, " (from ", settings_from,
                                                "): the sub-blocks tile a query block"));
    if (block_size && !query_sub_blocks && settings.query_sub_blocks > settings.block_size)
      throw rtp::tools::UsageError(rtp::str_cat("--block-size ", *block_size, " is below the query sub-blocks ",
                                                settings.query_sub_blocks, " (from ", settings_from,
                                                "): give --query-sub-blocks <= ", *block_size, " too"));
    RTP_CHECK(settings.query_sub_blocks >= 1 && (settings.query_sub_blocks & (settings.query_sub_blocks - 1)) == 0 &&
                  settings.query_sub_blocks <= settings.block_size,
              "query sub-blocks must be a power of two in [1, block size ", settings.block_size, "], found ",
              settings.query_sub_blocks, " (from ", settings_from, block_size ? " and --block-size" : "", ")");

    rtp::sparse::RtpurboManifest provenance;
    provenance.heads_source = heads_path;
    provenance.indexer_source = indexer_path;
    std::string cmd = "rtpurbo-export";
    for (int i = 1; i < argc; ++i) cmd += std::string(" ") + argv[i];
    provenance.created_by = cmd;
    const bool has_indexer = indexer.heads().num_layers > 0;
    rtp::sparse::export_converted(o, provenance, heads, settings, indexer);
    std::cout << "wrote " << o.out_dir << ": " << heads.count_retrieval() << " of "
              << heads.num_layers * heads.num_kv_heads << " KV heads retrieval, "
              << (has_indexer ? "with" : "without") << " indexer, weights "
              << (o.copy_weights ? "copied" : "linked") << "\n";
    std::cout << "settings (from " << settings_from << ", then flags): sink " << settings.sink << ", window "
              << settings.window << ", top_p " << settings.top_p << ", block size " << settings.block_size
              << ", local blocks " << settings.local_blocks << ", query sub-blocks " << settings.query_sub_blocks
              << ", aggregate " << settings.sub_block_aggregate << ", dense_below " << settings.dense_below << "\n";
    if (heads_arg.profile_sink >= 0 && (heads_arg.profile_window != settings.window || heads_arg.profile_sink != settings.sink))
      std::cout << "note: " << heads_path << " was calibrated with window " << heads_arg.profile_window << " and sink "
                << heads_arg.profile_sink << "; the streaming heads get window " << settings.window << " and sink "
                << settings.sink << "\n";
    // Long-context models: RTP-LLM keeps prompts under seqlen_threshold (16384 by default) dense, and on an H100 the
    // whole sparse decode step only overtakes the dense one between 8K and 16K tokens (docs/decode.md).
    if (settings.dense_below == 0 && cfg.max_position_embeddings > kDenseBelowHint)
      std::cout << "note: dense_below 0: prompts of every length run sparse; short ones gain nothing (the sparse "
                << "decode step of Qwen3-0.6B overtakes the dense one between 8K and 16K tokens on an H100, "
                << "docs/decode.md); --dense-below " << kDenseBelowHint << " keeps shorter prompts dense, as RTP-LLM's "
                << "seqlen_threshold does\n";
    // Warnings go to stderr too, where scripts that keep stdout still show them.
    if (heads.count_retrieval() > 0 && !has_indexer)
      std::cerr << "rtpurbo-export: warning: " << heads.count_retrieval() << " retrieval KV heads but no --indexer: "
                << "they will attend densely (the model evaluates as dense on those heads), and RULER evaluation of "
                << "the sparse model will fail with \"layer N has retrieval heads but no indexer\"; pass --indexer "
                << "CKPT from rtpurbo-train (stage indexer)\n";
    if (cfg.max_position_embeddings > 0 && settings.sink + settings.window >= cfg.max_position_embeddings)
      std::cerr << "rtpurbo-export: warning: sink + window = " << settings.sink + settings.window << " >= the model's "
                << "max_position_embeddings " << cfg.max_position_embeddings << ": streaming heads see every token "
                << "of any prompt the model takes, so they are dense in effect (set --window, or pass the --indexer "
                << "whose recipe chose it)\n";
    return 0;
  });
}
