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

}  // namespace rtp::eval
