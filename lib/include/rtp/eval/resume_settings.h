#pragma once
// The settings check of a resumed evaluation (rtpurbo-eval --resume, RULER and toy): the run that continues must have
// the settings the unfinished one was started with, or its numbers would not be that evaluation's.
#include <nlohmann/json.hpp>
#include <string>

namespace rtp::eval {

// Throws rtp::Error naming `path` and every key of `now` whose value differs from `was`'s ("key: was X, now Y"),
// with what to do instead; returns when they agree.
void require_same_settings(const std::string& path, const nlohmann::json& was, const nlohmann::json& now);

// `path` as an absolute, normalised path ("" stays ""): settings name files the same way from any working directory.
std::string absolute_setting_path(const std::string& path);

// What a file or a directory holds, as a short hex string ("" for ""): files up to 64 MiB by their bytes, larger
// ones (weight shards, often links to a base model) by resolved path, size and modification time; a directory by
// every file in it. A resumed evaluation records it beside the path, so that a model re-exported in place with
// other settings or another indexer is not taken for the one the finished passes measured.
std::string contents_fingerprint(const std::string& path);

}  // namespace rtp::eval
