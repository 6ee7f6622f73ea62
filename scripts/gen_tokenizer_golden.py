#!/usr/bin/env python3
"""Generate the golden set for the C++ tokenizer (rtp::text::Tokenizer) from Hugging Face `tokenizers`.

Usage:
  python3 scripts/gen_tokenizer_golden.py \
      [--tokenizer ../shared/data/qwen3-tokenizer/tokenizer.json] \
      [--output data/fixtures/tokenizer/golden.jsonl] [--seed 20250101]

Writes one JSON object per line: {"text", "ids", "decoded", "decoded_skip"} where
  ids          = Tokenizer.encode(text, add_special_tokens=False).ids
  decoded      = Tokenizer.decode(ids, skip_special_tokens=False)
  decoded_skip = Tokenizer.decode(ids, skip_special_tokens=True)
The first line is a header {"meta": {...}} with the tokenizers version, the tokenizer file's sha256, the seed
and get_vocab_size(with_added_tokens=True). Everything is deterministic for a given seed.
Only this script uses Python `tokenizers`; the C++ tests never do.
"""
import argparse
import hashlib
import json
import os
import random
import sys
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def fixed_cases():
    c = []
    # --- Latin, accents, contractions ---
    c += [
        "Hello world",
        "Hello, world! How are you?",
        "The quick brown fox jumps over the lazy dog.",
        "I'm, you're, he's, she'll, we've, they'd, it's, can't, won't",
        "I'M, YOU'RE, HE'S, SHE'LL, WE'VE, THEY'D, IT'S, CAN'T",
        "He'S there'LL be 'Re 'vE 'M 'D 'T 'Ll",
        "'s 't 're 've 'm 'll 'd",
        "'ſ 'ſt 'K 'ß x'ſ",
        "don’t (curly apostrophe) vs don't",
        "'''s'''",
        "'",
        "''",
        "a'b'c'd'e's",
        "Café naïve façade coöperate résumé Ångström Øresund Łódź Dvořák",
        "Ça va? Où est-il? Über straße ÆØÅ æøå ÿ ĳ ŉ",
        "fiancée déjà-vu jalapeño piñata São Paulo",
        "ǅ ǈ ǋ ǲ titlecase digraphs",
        "ﬁ ﬂ ﬀ ﬃ ﬄ ﬅ ﬆ ligatures",
    ]
    # --- NFC: decomposed forms that NFC composes, and ones it does not ---
    c += [
        "e\u0301 a\u0300 o\u0308 n\u0303 c\u0327",
        "Cafe\u0301 re\u0301sume\u0301",
        "A\u030a ångström",
        "\u1100\u1161\u11a8 (conjoining jamo -> 각)",
        "\u0041\u0301\u0323 multiple marks reorder",
        "q\u0307\u0323 no precomposed",
        "\u212b angstrom sign, \u2126 ohm sign, \u212a kelvin",
        "\u0344 \u0340 \u0341 singleton decompositions",
        "\u0958 \u0929 Devanagari nukta",
        "x\u0301\u0301\u0301\u0301",
        "\u0301 leading combining mark",
        " \u0301 space then mark",
        "\u00e9\u0301 precomposed plus mark",
        "\uac00\u11a8 hangul LV + T",
    ]
    # --- CJK, Arabic, Hindi, Thai, Russian, Greek, others ---
    c += [
        "你好，世界！今天天气很好。",
        "我爱自然语言处理和机器学习。",
        "日本語のテキスト、ひらがなとカタカナ。東京は大きい都市です。",
        "한국어 텍스트입니다. 안녕하세요!",
        "中文English混合mixed文本123数字",
        "مرحبا بالعالم! كيف حالك؟ ١٢٣٤٥٦٧٨٩٠",
        "العربية: الذكاء الاصطناعي",
        "שלום עולם",
        "नमस्ते दुनिया! हिन्दी में पाठ। १२३",
        "ভাষা বাংলা",
        "தமிழ் மொழி",
        "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่าง",
        "Привет, мир! Как дела? Ёлка ЁЛКА",
        "Γειά σου Κόσμε! ΑΒΓΔ αβγδ ς",
        "Ἀθῆναι ᾅδης polytonic",
        "Tiếng Việt có dấu: Hà Nội, Sài Gòn",
        "ქართული ენა",
        "Հայերեն",
        "አማርኛ",
        "ᠮᠣᠩᠭᠣᠯ mongolian \u180e vowel sep",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙 𝟙𝟚𝟛",
        "Ⅻ ⅻ ½ ¾ ² ³ ① ② ⑩ ⒈",
        "٣ ৩ ๓ ３ １２３ full-width digits",
        "ＡＢＣ ｶﾀｶﾅ full-width/half-width",
    ]
    # --- emoji ---
    c += [
        "😀😃😄😁 emoji",
        "👍🏻 👍🏼 👍🏽 👍🏾 👍🏿 skin tones",
        "👨‍👩‍👧‍👦 family ZWJ",
        "👩🏽‍💻 🏳️‍🌈 🏴‍☠️",
        "🇺🇸🇯🇵🇩🇪🇫🇷 flags",
        "🏴󠁧󠁢󠁳󠁣󠁴󠁿 subdivision flag",
        "❤️ ❤ ♥️ ✔️ ☑️ variation selectors",
        "1️⃣ #️⃣ keycaps",
        "Hello 👋 world 🌍!",
        "🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂",
    ]
    # --- code ---
    c += [
        "def foo(x, y=2):\n    return x ** y  # power\n",
        "int main(int argc, char** argv) {\n\tprintf(\"%d\\n\", argc);\n\treturn 0;\n}\n",
        "fn main() -> Result<(), Box<dyn Error>> {\n    let v: Vec<u8> = vec![1, 2, 3];\n    Ok(())\n}",
        "const f = async (a) => { await fetch(`/api/${a}`); };",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
        "#include <vector>\ntemplate <typename T> struct S { T x; };\n",
        "<html><body><div class=\"a\">Text &amp; more</div></body></html>",
        "if [[ -z \"$HOME\" ]]; then echo 'no home' >&2; exit 1; fi",
        "x = {'a': [1, 2, 3], \"b\": None}\nprint(x['a'][0])",
        "    \n        \n\t\t\n",
        "a+=b;c-=d;e*=f;g/=h;i%=j;k&&l||m!n",
        "$$\\frac{a}{b} + \\sum_{i=0}^{n} x_i^2$$",
        "https://example.com/path?query=1&b=2#frag",
        "user@example.com, +1-555-123-4567",
        "{\"key\": \"value\", \"num\": 12345.678e-9}",
        "    def method(self):\r\n        pass\r\n",
    ]
    # --- whitespace ---
    ws = [
        " ", "  ", "   ", "\t", "\n", "\r\n", "\r", "\n\n", "\n\n\n", " \n", "\n ", " \n ", "  \n  ",
        "\t\n\t", "\r\n\r\n", " \r\n ", "a  b", "a   b", "a\tb", "a\t\tb", "a \tb", "a\t b",
        "a\nb", "a\n\nb", "a \n b", "a  \n  b", "a\r\nb", "a \r\n b", "a\u00a0b", "a\u00a0\u00a0b",
        "a \u00a0b", "a\u00a0 b", "a\u3000b", "a\u3000\u3000b", "\u3000中文", "a\u2028b", "a\u2029b",
        "a\u2028\u2028b", "a\u0085b", "a\u1680b", "a\u2000b", "a\u2009b", "a\u200ab", "a\u202fb",
        "a\u205fb", "a\u200bb", "a\ufeffb", "a\u180eb", "a\u000bb", "a\u000cb", "a\u001cb", "a\u001fb",
        "a\u0085\u0085b", "end with spaces   ", "   start with spaces", "\n\nstart newlines",
        "end newlines\n\n", "mixed \t \n \r\n \u00a0 \u3000 end", " \u00a0\n", "\u00a0\n\u00a0x",
        "x \u2028 y", "x\u2028\ny", "x\n\u2028y", "1 2  3   4", "!  !", "!\n!", ". \n.", "a\n\r\nb",
        "\t\ta", "  a", " a", "\u00a0a", "\u3000a", "\u2028a", " !", "  !", "\n!", "\u00a0!",
        " 1", "  1", "\t1",
    ]
    c += ws
    # --- digits ---
    c += [
        "1234567890", "3.14159265358979", "1,000,000", "2024-01-31T12:34:56Z", "v1.2.3-rc4",
        "0x1F 0b1010 1e10 -42 +7", "12abc34def", "abc123", "١٢٣ ٤٥٦", "9" * 50,
    ]
    # --- special tokens inline ---
    c += [
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n",
        "<|endoftext|>",
        "text<|endoftext|>more text",
        "<|endoftext|><|endoftext|>",
        " <|im_start|> spaced <|im_end|> ",
        "<think>\nreasoning here\n</think>\n\nanswer",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
        "<tool_response>ok</tool_response>",
        "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>pass<|fim_pad|>",
        "<|repo_name|>x<|file_sep|>y",
        "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>",
        "<|box_start|>(1,2)<|box_end|><|quad_start|><|quad_end|><|object_ref_start|>a<|object_ref_end|>",
        "<|video_pad|><|vision_pad|>",
        "<|im_start|<|im_end|>",
        "<|im_startx|> <|IM_START|> <| im_start |>",
        "<|endoftext|>\u00e9<|endoftext|>e\u0301",
        "abc<think>def</think>ghi",
        "<<|im_start|>>",
    ]
    # --- long repeats ---
    c += [
        "a" * 1000,
        " " * 500,
        "\n" * 300,
        "ab" * 400,
        "hello " * 200,
        "的" * 300,
        "😀" * 100,
        "-" * 256,
        "=" * 100 + "\n" + "=" * 100,
        "The cat sat on the mat. " * 40,
        "\t" * 64 + "x",
        " " * 100 + "x",
        "x" + " " * 100,
        "." * 1000,
        "e\u0301" * 100,
    ]
    return c


def random_texts(rng, n):
    """Random strings over assigned code points of several scripts, plus structural characters."""
    ranges = [
        (0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x530, 0x58F), (0x590, 0x5FF),
        (0x600, 0x6FF), (0x900, 0x97F), (0x980, 0x9FF), (0xE00, 0xE7F), (0x10A0, 0x10FF), (0x1100, 0x11FF),
        (0x1E00, 0x1FFF), (0x2000, 0x206F), (0x20A0, 0x20CF), (0x2100, 0x218F), (0x2190, 0x23FF),
        (0x2500, 0x27BF), (0x3000, 0x303F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
        (0xFB00, 0xFB4F), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF), (0x1D400, 0x1D7FF), (0x1F300, 0x1F64F),
        (0x1F900, 0x1F9FF), (0x0300, 0x036F),
    ]
    structural = [" ", " ", " ", "\n", "\t", "\r\n", "'", "'s", "'LL", "1", "22", "\u00a0", "\u3000"]
    out = []
    while len(out) < n:
        k = rng.randint(1, 60)
        chars = []
        for _ in range(k):
            if rng.random() < 0.25:
                chars.append(rng.choice(structural))
                continue
            lo, hi = rng.choice(ranges)
            cp = rng.randint(lo, hi)
            ch = chr(cp)
            cat = unicodedata.category(ch)
            if cat in ("Cn", "Cs", "Co"):
                continue
            chars.append(ch)
        out.append("".join(chars))
    return out


def random_word_texts(rng, n):
    words = ["the", "The", "THE", "a", "of", "and", "to", "in", "is", "it's", "don't", "WE'LL", "hello",
             "world", "café", "naïve", "数据", "模型", "训练", "данные", "модель", "ολα", "مرحبا", "नमस्ते",
             "ไทย", "😀", "👍🏽", "123", "4.5", "x_y", "__init__", "()", "{}", "[]", "->", "=>", "!=", "...",
             "—", "–", "“quoted”", "«guillemets»", "<|endoftext|>", "<think>", "\n", "\n\n", "  ", "\t"]
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        seps = [" ", " ", " ", "", "\n", "  ", ", ", ". "]
        out.append("".join(rng.choice(words) + rng.choice(seps) for _ in range(k)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "..", "shared", "data", "qwen3-tokenizer",
                                                        "tokenizer.json"))
    ap.add_argument("--output", default=os.path.join(ROOT, "data", "fixtures", "tokenizer", "golden.jsonl"))
    ap.add_argument("--seed", type=int, default=20250101)
    ap.add_argument("--random", type=int, default=200, help="number of random-code-point strings")
    ap.add_argument("--random-words", type=int, default=150, help="number of random word-salad strings")
    args = ap.parse_args()

    import tokenizers
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(args.tokenizer)
    with open(args.tokenizer, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    rng = random.Random(args.seed)
    texts = fixed_cases() + random_texts(rng, args.random) + random_word_texts(rng, args.random_words)

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        meta = {"tokenizers_version": tokenizers.__version__, "tokenizer_sha256": sha, "seed": args.seed,
                "count": len(texts), "vocab_size_with_added": tok.get_vocab_size(with_added_tokens=True),
                "generator": "scripts/gen_tokenizer_golden.py"}
        f.write(json.dumps({"meta": meta}, ensure_ascii=False) + "\n")
        for t in texts:
            ids = tok.encode(t, add_special_tokens=False).ids
            rec = {"text": t, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                   "decoded_skip": tok.decode(ids, skip_special_tokens=True)}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, args.output)
    print(f"wrote {len(texts)} cases to {args.output} (tokenizers {tokenizers.__version__})", file=sys.stderr)


if __name__ == "__main__":
    main()
