#pragma once
// The RULER report: the ruler.json that `rtpurbo-eval --task ruler` writes (rtp/eval/ruler_eval.h) rendered as one
// self-contained HTML file (inline CSS and SVG, no scripts, no external resources), written next to it as
// report.html. Sections, each a <section id="...">:
//   summary   task x length: dense and sparse string-match score and sparse - dense
//   accuracy  score against length, one plot per task (a <figure class="task">), dense and sparse
//   memory    KV cache bytes at the end of generation against length (mean over tasks), dense and sparse
//   time      seconds per sample against length: dense generation (prefill and decode together, as
//             ruler.json records it), sparse prefill, sparse decode; and a table per task and length
// Either mode may be absent (--dense / --sparse runs); a mode is present when any row has its score, and then
// every row must carry all of its fields. Pure string building, no torch: tests render it from hand-made JSON.
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace rtp::eval {

// `source` names the JSON in error messages (its path). Throws rtp::Error naming the row and the field when the
// JSON does not have ruler_eval's structure.
std::string render_ruler_report_html(const nlohmann::json& results, const std::string& source = "ruler.json");

}  // namespace rtp::eval
