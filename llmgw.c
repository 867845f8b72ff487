/*
 * llmgw.c - an LLM gateway in one C file.
 *
 * One OpenAI-compatible entry point in front of many model providers, with
 * a routing table loaded from an INI file, fallback, usage accounting and an
 * access log; a poll()-based HTTP/1.1 server and client, a JSON tokenizer
 * that does not allocate, and provider adapters, in one portable C99 file.
 *
 * Build:   cc -std=c99 -O2 -o llmgw llmgw.c -lpthread
 * Embed:   cc -std=c99 -DLLMGW_NO_MAIN -c llmgw.c   (API in llmgw.h)
 *
 * Compile-time options (each has a default in section 0):
 *   LLMGW_NO_MAIN        leave out main()
 *   LLMGW_TLS            1 = HTTPS through BearSSL (the Makefile's default), 0 = none
 *   LLMGW_IO_BUF         initial size of a connection buffer
 *   LLMGW_MAX_HEADERS    header lines per HTTP message
 *   LLMGW_JSON_DEPTH     JSON nesting limit
 *   LLMGW_JSON_TOKENS    JSON token limit per document
 *   LLMGW_MAX_RESPONSE   largest upstream response body kept in memory
 *   LLMGW_MAX_PLAN       most candidate targets considered per request
 *   LLMGW_POOL_IDLE_MS   how long an idle upstream connection is kept
 *   LLMGW_POOL_MAX_IDLE  idle upstream connections kept per origin
 *   LLMGW_DNS_TTL_MS     how long a resolved host name is cached
 *   LLMGW_BREAKER_FAILS, LLMGW_BREAKER_COOL_MS   circuit breaker tuning
 *   LLMGW_STORE_MAX_REPLY  largest string a state store ([store]) may answer with
 *   LLMGW_PRICE_TIERS    long-context price tiers kept per price of a target
 *
 * Contents: section number, title, prefixes : what it owns. A prefix that
 * ends in _ owns the names it starts; one without owns that name and its
 * name_ extensions. `make sections` (run by make test) fails when a
 * function is defined outside the section that owns its prefix.
 *   0. Configuration macros and includes
 *   1. Platform and utilities      lg_str, lg_strz, lg_lower, lg_now, lg_wall, lg_memfind, lg_memmem,
 *                                 lg_next_quote, lg_glob, lg_sha256, lg_sha1, lg_hmac_, lg_sigv4_, lg_hex32,
 *                                 lg_crc32, lg_days_, lg_civil_, lg_ct_, lg_base64, lg_hexval, lg_rand,
 *                                 lg_set_nonblock, lg_read_file, lg_atomic_, lg_flag_, lg_gauge_ :
 *                                 string views, time, SHA-256, HMAC, CRC, ids, atomics
 *   2. Buffers                     lg_buf_, lg_arena_, lg_utoa, lg_itoa, lg_cpy : struct lg_buf,
 *                                 struct lg_arena
 *   3. Log                         lg_log_ : diagnostics to stderr
 *   4. JSON                        lg_json_, lg_utf8_, lg_hex4, lg_fmt_g, lg_jesc, lg_jnum : tokenizer,
 *                                 unescape, writer (always well-formed UTF-8 out)
 *   5. INI and config              lg_ini_, lg_cfg_, lg_name_hash, lg_names_, lg_price_, lg_rx_ : struct
 *                                 lg_cfg snapshot, the hashed names of duplicate checks; 5b the price
 *                                 catalog (prices = FILE, lg_price_) and its regex matcher (lg_rx_)
 *   6. HTTP parsing                lg_http_, lg_chunked_, lg_sse_ : heads, chunked decoder, SSE
 *   7. TLS                         lg_tls_, lg_cfg_load, lg_cfg_ref, lg_cfg_unref : BearSSL driven by
 *                                 the loop, trust anchors; a config snapshot with its TLS contexts
 *   8. Event loop and connections  lg_loop_, lg_conn_, lg_timer_, lg_blk_, lg_io_, lg_lock, lg_unlock,
 *                                 llmgw_poll : poll set, timers, one iteration of the loop; what the
 *                                 loops of workers = N share (struct lg_shared)
 *   9. DNS                         lg_dns_ : resolver thread and cache
 *  10. HTTP client and pool        lg_up_, lg_rd_, lg_origin_ : upstream connections
 *  11. Providers and dialects      lg_req_, lg_resp_, lg_canon, lg_ev, lg_fin_, lg_native, lg_hw_,
 *                                 lg_uri_enc, lg_prov_, lg_w_, lg_p_, lg_frame_, lg_be32, lg_evstream_,
 *                                 lg_d_ : 11a the request object and its lifetime, responses to the
 *                                 client (lg_req_, lg_resp_); 11b the canonical request (lg_canon_);
 *                                 11c canonical events (lg_ev); 11d the upstream request (lg_hw_);
 *                                 11e-j one subsection per provider: its path and auth (lg_prov_),
 *                                 request body (lg_w_: write to a provider) and parsers (lg_p_: parse
 *                                 a provider's answer); 11k the provider rows; 11l the client
 *                                 dialects (lg_d_: write to a client) and their rows
 *  12. Router                      lg_route_, lg_att_, lg_scrub : the plan of a request, health,
 *                                 breakers, retries, affinity, attempts; provider secrets out of
 *                                 upstream text
 *  13. Accounting and the store   lg_st_, lg_acct_, lg_floordiv, lg_lbl, lg_redis_ : 13a the state store
 *                                 (struct lg_store: the only way into budgets, limits, health,
 *                                 breakers, affinity and request records; lg_st_); prices,
 *                                 budgets, limits, ledger, metrics, ring of recent requests, access
 *                                 log (lg_acct_); 13f the in-process store (lg_st_local); 13g the
 *                                 Redis store (lg_st_redis): RESP client, scripts, the epoch
 *                                 (lg_redis_)
 *  14. Dashboard and admin JSON   lg_dash_ : GET /ui (the page, its login), GET /admin/... (overview, series,
 *                                 keys, requests, generation, health); the time series per key and model
 *                                 (struct lg_dash, kept by the first loop)
 *  15. Server handlers             lg_srv_ : endpoints, errors, streaming
 *  16. Public API                  llmgw_, lg_listen_, lg_worker, lg_workers_ : what llmgw.h declares; listeners,
 *                                 workers = N
 *  17. main                        lg_main_ : the command line
 *
 * State: everything hangs off struct llmgw (section 8), one per event
 * loop; with workers = N the first loop's router health, accounting and
 * ledger are shared by the others under one lock (struct lg_shared).
 * Requests reach that shared state only through the state store's calls
 * (struct lg_store, section 13a), which may answer later. The
 * only file-scope variable is main()'s signal target (section 17).
 */

/* ===== 0. Configuration macros and includes ============================ */

#if !defined(_POSIX_C_SOURCE) || _POSIX_C_SOURCE < 200809L
#undef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE 1 /* SO_REUSEPORT, strcasecmp on glibc and musl */
#endif

#include "llmgw.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef LLMGW_TLS
#define LLMGW_TLS 0 /* HTTPS upstreams and listeners need BearSSL */
#endif
#if LLMGW_TLS
#include <bearssl.h>
#endif
#ifndef LLMGW_IO_BUF
#define LLMGW_IO_BUF 4096 /* first allocation of a connection buffer */
#endif
#define LG_BLKCACHE 64 /* such first allocations kept for reuse (256 KB at most) */
#define LG_MAX_WORKERS 64 /* event loops (workers = N) */
#define LG_RFREE 16    /* request objects kept for reuse */
#define LG_RDBUF 65536 /* the loop's read buffer for upstream responses */
#ifdef PIPE_BUF
#define LG_PIPE_BUF PIPE_BUF /* a write to a pipe up to this size is not interleaved */
#else
#define LG_PIPE_BUF 512
#endif
#define LG_POOL_CHECK_MS 1000 /* pooled connections idle longer are checked on reuse */
#ifndef LLMGW_MAX_HEADERS
#define LLMGW_MAX_HEADERS 64 /* more header lines than this is a 431 */
#endif
#ifndef LLMGW_JSON_DEPTH
#define LLMGW_JSON_DEPTH 128 /* deeper nesting is rejected as malformed */
#endif
#ifndef LLMGW_JSON_TOKENS
#define LLMGW_JSON_TOKENS 1048576 /* tokens per JSON document */
#endif
#ifndef LLMGW_MAX_RESPONSE
#define LLMGW_MAX_RESPONSE (64u << 20) /* buffered upstream response body */
#endif
#ifndef LLMGW_MAX_EVENT
#define LLMGW_MAX_EVENT (8u << 20) /* one SSE event from an upstream */
#endif
#ifndef LLMGW_MAX_PLAN
#define LLMGW_MAX_PLAN 32 /* candidate targets per request */
#endif
#ifndef LLMGW_MAX_ATTEMPTS
#define LLMGW_MAX_ATTEMPTS 16 /* hard cap on max_attempts */
#endif
#ifndef LLMGW_POOL_IDLE_MS
#define LLMGW_POOL_IDLE_MS 30000 /* idle upstream connection lifetime */
#endif
#ifndef LLMGW_POOL_MAX_IDLE
#define LLMGW_POOL_MAX_IDLE 256 /* idle upstream connections per origin */
#endif
#ifndef LLMGW_DNS_TTL_MS
#define LLMGW_DNS_TTL_MS 60000 /* resolved names are cached this long */
#endif
#ifndef LLMGW_STREAM_HIGHWATER
#define LLMGW_STREAM_HIGHWATER (256u << 10) /* stop reading upstream above */
#endif
#ifndef LLMGW_MAX_CONFIG
#define LLMGW_MAX_CONFIG (1u << 20) /* largest INI file */
#endif
#ifndef LLMGW_BREAKER_FAILS
#define LLMGW_BREAKER_FAILS 5 /* consecutive failures that open a target's breaker */
#endif
#ifndef LLMGW_BREAKER_COOL_MS
#define LLMGW_BREAKER_COOL_MS 30000 /* first cool-down, doubled up to 5 minutes */
#endif
#ifndef LLMGW_STORE_MAX_REPLY
#define LLMGW_STORE_MAX_REPLY (1u << 20) /* largest string in a state store's reply ([store]) */
#endif
#ifndef LLMGW_PRICE_TIERS
#define LLMGW_PRICE_TIERS 4 /* long-context price tiers kept per price of a target */
#endif
#define LG_PRICE_TIERS LLMGW_PRICE_TIERS
#ifndef LLMGW_ACCEPT_BURST
#define LLMGW_ACCEPT_BURST 64 /* accepts per listener per iteration */
#endif

#define LG_UNUSED(x) ((void)(x))
#define LG_MIN(a, b) ((a) < (b) ? (a) : (b))
#define LG_MAX(a, b) ((a) > (b) ? (a) : (b))
#define LG_COUNTOF(a) (sizeof(a) / sizeof((a)[0]))
#if defined(__GNUC__) || defined(__clang__)
#define LG_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define LG_INLINE __inline__ __attribute__((always_inline)) /* the JSON scanner's inner steps */
#define LG_COLD __attribute__((cold)) /* runs once (config, start-up) or rarely: compiled for size */
#else
#define LG_COLD
#define LG_PRINTF(f, a)
#define LG_INLINE
#endif

/* ===== 1. Platform and utilities ======================================= */

/* A string view: never assumed NUL-terminated. Whoever returns one says
 * how long the bytes it points at stay valid. */
typedef struct {
	const char *p;
	size_t n;
} lg_str;

static lg_str lg_str_of(const char *p, size_t n)
{
	lg_str s;
	s.p = p;
	s.n = n;
	return s;
}

static lg_str lg_strz(const char *z) { return lg_str_of(z, z ? strlen(z) : 0); }

static int lg_lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

static int lg_str_eq(lg_str a, const char *z)
{
	size_t n = strlen(z);
	return a.n == n && memcmp(a.p, z, n) == 0;
}

static int lg_str_ieqn(lg_str a, const char *z, size_t n)
{
	size_t i;
	if (a.n != n) return 0;
	for (i = 0; i < n; i++) {
		unsigned x = (unsigned char)a.p[i], y = (unsigned char)z[i];
		/* equal, or the same letter in the other case */
		if (x != y && ((x ^ y) != 0x20 || (x | 0x20) - 'a' > 25u)) return 0;
	}
	return 1;
}
/* a macro so that the length of a literal is a constant: unequal lengths
 * cost one comparison (header names are compared a lot) */
#define lg_str_ieq(a, z) lg_str_ieqn((a), (z), strlen(z))

static int lg_str_ieqs(lg_str a, lg_str b)
{
	size_t i;
	if (a.n != b.n) return 0;
	for (i = 0; i < a.n; i++)
		if (lg_lower((unsigned char)a.p[i]) != lg_lower((unsigned char)b.p[i])) return 0;
	return 1;
}

static lg_str lg_str_trim(lg_str s)
{
	while (s.n && (s.p[0] == ' ' || s.p[0] == '\t')) s.p++, s.n--;
	while (s.n && (s.p[s.n - 1] == ' ' || s.p[s.n - 1] == '\t' || s.p[s.n - 1] == '\r'))
		s.n--;
	return s;
}

/* Does the comma-separated token list s contain tok (case-insensitive)? */
static int lg_str_has_token(lg_str s, const char *tok)
{
	size_t i = 0, st;
	if (!s.p) return 0;
	while (i <= s.n) {
		st = i;
		while (i < s.n && s.p[i] != ',') i++;
		if (lg_str_ieq(lg_str_trim(lg_str_of(s.p + st, i - st)), tok)) return 1;
		i++;
	}
	return 0;
}

static int64_t lg_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t lg_wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Where p[0..n) contains the string z, or NULL (memmem is not POSIX). */
static const char *lg_memfind(const char *p, size_t n, const char *z)
{
	size_t zl = strlen(z);
	const char *e, *q = p;
	if (!p || !n) return NULL; /* (NULL + 0 is undefined) */
	e = p + n;
	while (zl && (size_t)(e - q) >= zl && (q = (const char *)memchr(q, z[0], (size_t)(e - q) - zl + 1)) != NULL) {
		if (memcmp(q, z, zl) == 0) return q;
		q++;
	}
	return NULL;
}

static int lg_memmem(const char *p, size_t n, const char *z) { return lg_memfind(p, n, z) != NULL; }

/* Glob match with * and ?, used for key model allow-lists. */
static int lg_glob(const char *pat, lg_str s)
{
	size_t i = 0, star_i = 0;
	const char *star = NULL;
	while (i < s.n) {
		if (*pat == '*') {
			star = ++pat;
			star_i = i;
		} else if (*pat && (*pat == '?' || *pat == s.p[i])) {
			pat++;
			i++;
		} else if (star) {
			pat = star;
			i = ++star_i;
		} else {
			return 0;
		}
	}
	while (*pat == '*') pat++;
	return *pat == 0;
}

/* SHA-256 (FIPS 180-4). Used for sha256: key secrets and request ids;
 * works on bytes, so byte order of the host does not matter. */
struct lg_sha256 {
	uint32_t h[8];
	uint64_t len;
	unsigned char buf[64];
	size_t n;
};

static const uint32_t lg_sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define LG_ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void lg_sha256_block(struct lg_sha256 *s, const unsigned char *p)
{
	uint32_t w[64], a, b, c, d, e, f, g, h, t1, t2;
	int i;
	for (i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		       (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
	for (i = 16; i < 64; i++) {
		uint32_t s0 = LG_ROR(w[i - 15], 7) ^ LG_ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = LG_ROR(w[i - 2], 17) ^ LG_ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3];
	e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
	for (i = 0; i < 64; i++) {
		t1 = h + (LG_ROR(e, 6) ^ LG_ROR(e, 11) ^ LG_ROR(e, 25)) + ((e & f) ^ (~e & g)) +
		     lg_sha256_k[i] + w[i];
		t2 = (LG_ROR(a, 2) ^ LG_ROR(a, 13) ^ LG_ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
		h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
	}
	s->h[0] += a, s->h[1] += b, s->h[2] += c, s->h[3] += d;
	s->h[4] += e, s->h[5] += f, s->h[6] += g, s->h[7] += h;
}

static void lg_sha256_init(struct lg_sha256 *s)
{
	static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
	                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
	memcpy(s->h, iv, sizeof iv);
	s->len = 0;
	s->n = 0;
}

static void lg_sha256_update(struct lg_sha256 *s, const void *data, size_t len)
{
	const unsigned char *p = (const unsigned char *)data;
	s->len += len;
	while (len) {
		size_t k = LG_MIN(64 - s->n, len);
		memcpy(s->buf + s->n, p, k);
		s->n += k, p += k, len -= k;
		if (s->n == 64) {
			lg_sha256_block(s, s->buf);
			s->n = 0;
		}
	}
}

static void lg_sha256_final(struct lg_sha256 *s, unsigned char out[32])
{
	uint64_t bits = s->len * 8;
	unsigned char pad = 0x80, len8[8];
	int i;
	lg_sha256_update(s, &pad, 1);
	pad = 0;
	while (s->n != 56) lg_sha256_update(s, &pad, 1);
	for (i = 0; i < 8; i++) len8[i] = (unsigned char)(bits >> (56 - 8 * i));
	lg_sha256_update(s, len8, 8);
	for (i = 0; i < 32; i++) out[i] = (unsigned char)(s->h[i / 4] >> (24 - 8 * (i % 4)));
}

static void lg_sha256(const void *data, size_t len, unsigned char out[32])
{
	struct lg_sha256 s;
	lg_sha256_init(&s);
	lg_sha256_update(&s, data, len);
	lg_sha256_final(&s, out);
}

/* SHA-1 of one buffer: only to name the store's Lua scripts the way
 * Redis does (EVALSHA), never for anything secret. */
static void lg_sha1(const void *data, size_t len, unsigned char out[20])
{
	const unsigned char *p = (const unsigned char *)data;
	uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
	uint64_t bits = (uint64_t)len * 8;
	size_t off = 0, total = (len + 9 + 63) / 64 * 64;
	int i;
	while (off < total) { /* each block built from the input, the 0x80 and the length */
		unsigned char blk[64];
		uint32_t w[80], a, b, c, d, e, t;
		for (i = 0; i < 64; i++) {
			size_t k = off + (size_t)i;
			blk[i] = k < len ? p[k] : k == len ? 0x80 : 0;
		}
		if (off + 64 == total)
			for (i = 0; i < 8; i++) blk[56 + i] = (unsigned char)(bits >> (56 - 8 * i));
		for (i = 0; i < 16; i++)
			w[i] = (uint32_t)blk[4 * i] << 24 | (uint32_t)blk[4 * i + 1] << 16 | (uint32_t)blk[4 * i + 2] << 8 |
			       (uint32_t)blk[4 * i + 3];
		for (i = 16; i < 80; i++) {
			t = w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16];
			w[i] = t << 1 | t >> 31;
		}
		a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
		for (i = 0; i < 80; i++) {
			uint32_t f = i < 20 ? (b & c) | (~b & d) : i < 40 ? b ^ c ^ d : i < 60 ? (b & c) | (b & d) | (c & d) : b ^ c ^ d;
			uint32_t k = i < 20 ? 0x5A827999 : i < 40 ? 0x6ED9EBA1 : i < 60 ? 0x8F1BBCDC : 0xCA62C1D6;
			t = (a << 5 | a >> 27) + f + e + k + w[i];
			e = d, d = c, c = b << 30 | b >> 2, b = a, a = t;
		}
		h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
		off += 64;
	}
	for (i = 0; i < 20; i++) out[i] = (unsigned char)(h[i / 4] >> (24 - 8 * (i % 4)));
}

/* HMAC-SHA-256 (RFC 2104): Bedrock's SigV4. */
static void lg_hmac_sha256(const void *key, size_t kl, const void *msg, size_t ml, unsigned char out[32])
{
	unsigned char k[64], pad[64], ih[32];
	struct lg_sha256 s;
	size_t i;
	memset(k, 0, sizeof k);
	if (kl > 64)
		lg_sha256(key, kl, k);
	else
		memcpy(k, key, kl);
	for (i = 0; i < 64; i++) pad[i] = (unsigned char)(k[i] ^ 0x36);
	lg_sha256_init(&s);
	lg_sha256_update(&s, pad, 64);
	lg_sha256_update(&s, msg, ml);
	lg_sha256_final(&s, ih);
	for (i = 0; i < 64; i++) pad[i] = (unsigned char)(k[i] ^ 0x5c);
	lg_sha256_init(&s);
	lg_sha256_update(&s, pad, 64);
	lg_sha256_update(&s, ih, 32);
	lg_sha256_final(&s, out);
}

/* The SigV4 signing key: HMAC chain "AWS4"+secret -> day -> region ->
 * service -> "aws4_request". */
static void lg_sigv4_key(const char *secret, const char *day, const char *region, const char *service,
                         unsigned char out[32])
{
	char k0[300];
	unsigned char a[32], b[32];
	int n = snprintf(k0, sizeof k0, "AWS4%s", secret);
	lg_hmac_sha256(k0, (size_t)(n > 0 ? n : 0), day, strlen(day), a);
	lg_hmac_sha256(a, 32, region, strlen(region), b);
	lg_hmac_sha256(b, 32, service, strlen(service), a);
	lg_hmac_sha256(a, 32, "aws4_request", 12, out);
}

static void lg_hex32(const unsigned char h[32], char out[65])
{
	static const char hx[] = "0123456789abcdef";
	int i;
	for (i = 0; i < 32; i++) out[2 * i] = hx[h[i] >> 4], out[2 * i + 1] = hx[h[i] & 15];
	out[64] = 0;
}

/* CRC-32 (IEEE, reflected, poly 0xEDB88320) with a 16-entry table: the
 * ledger's record check. Byte-oriented, so byte order does not matter. */
static uint32_t lg_crc32(uint32_t crc, const void *data, size_t n)
{
	static const uint32_t t[16] = {0x00000000, 0x1DB71064, 0x3B6E20C8, 0x26D930AC,
	                               0x76DC4190, 0x6B6B51F4, 0x4DB26158, 0x5005713C,
	                               0xEDB88320, 0xF00F9344, 0xD6D6A3E8, 0xCB61B38C,
	                               0x9B64C2B0, 0x86D3D2D4, 0xA00AE278, 0xBDBDF21C};
	const unsigned char *b = (const unsigned char *)data;
	crc = ~crc;
	while (n--) {
		crc ^= *b++;
		crc = (crc >> 4) ^ t[crc & 15];
		crc = (crc >> 4) ^ t[crc & 15];
	}
	return ~crc;
}

/* Days since 1970-01-01 of a proleptic Gregorian date, and back
 * (H. Hinnant's algorithms): budget periods are computed in UTC without
 * depending on timegm, which is not POSIX. */
static int64_t lg_days_from_civil(int64_t y, int m, int d)
{
	int64_t era, yoe, doy, doe;
	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static void lg_civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
	int64_t era, doe, yoe, doy, mp;
	z += 719468;
	era = (z >= 0 ? z : z - 146096) / 146097;
	doe = z - era * 146097;
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	*d = (int)(doy - (153 * mp + 2) / 5 + 1);
	*m = (int)(mp < 10 ? mp + 3 : mp - 9);
	*y = yoe + era * 400 + (*m <= 2);
}

/* Constant-time comparison: the time taken does not depend on where the
 * inputs differ, so a key cannot be guessed byte by byte. */
static int lg_ct_eq(const unsigned char *a, const unsigned char *b, size_t n)
{
	unsigned char d = 0;
	size_t i;
	for (i = 0; i < n; i++) d |= (unsigned char)(a[i] ^ b[i]);
	return d == 0;
}

/* Standard base64, for Proxy-Authorization. out needs 4*ceil(n/3)+1. */
static void lg_base64(const unsigned char *p, size_t n, char *out)
{
	static const char tb[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t i;
	for (i = 0; i + 2 < n; i += 3) {
		*out++ = tb[p[i] >> 2];
		*out++ = tb[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
		*out++ = tb[((p[i + 1] & 15) << 2) | (p[i + 2] >> 6)];
		*out++ = tb[p[i + 2] & 63];
	}
	if (i < n) {
		*out++ = tb[p[i] >> 2];
		if (i + 1 < n) {
			*out++ = tb[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
			*out++ = tb[(p[i + 1] & 15) << 2];
		} else {
			*out++ = tb[(p[i] & 3) << 4];
			*out++ = '=';
		}
		*out++ = '=';
	}
	*out = 0;
}

static int lg_hexval(int c)
{
	if (c >= '0' && c <= '9') return c - '0';
	c = lg_lower(c);
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	return -1;
}

/* xorshift64* : request ids and jitter, not secrets. */
static uint64_t lg_rand(uint64_t *st)
{
	uint64_t x = *st;
	x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
	*st = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static int lg_set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL, 0);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
	return fcntl(fd, F_SETFD, FD_CLOEXEC);
}

/* Reads a whole file into a fresh NUL-terminated buffer (caller frees). */
static char *lg_read_file(const char *path, size_t max, size_t *len, int *err)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	size_t n, cap;
	struct stat st;
	if (!f) {
		*err = errno;
		return NULL;
	}
	if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
		fclose(f);
		*err = EISDIR;
		return NULL;
	}
	if (st.st_size < 0 || (uint64_t)st.st_size > (uint64_t)max) {
		fclose(f);
		*err = EFBIG;
		return NULL;
	}
	/* the size the file has (plus a little, it may grow): never max up front */
	cap = (size_t)st.st_size + 4096;
	if (cap > max + 1) cap = max + 1;
	buf = (char *)malloc(cap + 1);
	if (!buf) {
		fclose(f);
		*err = ENOMEM;
		return NULL;
	}
	n = fread(buf, 1, cap, f);
	fclose(f);
	if (n > max) {
		free(buf);
		*err = EFBIG;
		return NULL;
	}
	buf[n] = 0;
	*len = n;
	return buf;
}

/* What more than one thread touches (the loops of workers = N, a stop
 * or reload from another thread or a signal handler): atomic builtins
 * where the compiler has them (gcc and clang: every target the Makefile
 * builds, lock-free for an int and a long). Without them llmgw runs one
 * loop, and plain accesses are enough. Gauges are written by their own
 * loop only and read by the others. */
#if defined(__GNUC__) || defined(__clang__)
#define LG_ATOMICS 1
static long lg_atomic_add(long *v, long d) { return __atomic_add_fetch(v, d, __ATOMIC_ACQ_REL); }
static long lg_atomic_get(long *v) { return __atomic_load_n(v, __ATOMIC_ACQUIRE); }
static void lg_flag_set(volatile sig_atomic_t *f) { __atomic_store_n(f, 1, __ATOMIC_RELEASE); }
static void lg_flag_clear(volatile sig_atomic_t *f) { __atomic_store_n(f, 0, __ATOMIC_RELEASE); }
static int lg_flag_get(volatile sig_atomic_t *f) { return __atomic_load_n(f, __ATOMIC_ACQUIRE); }
static void lg_gauge_add(int *v, int d) { __atomic_store_n(v, *v + d, __ATOMIC_RELAXED); }
static int lg_gauge_get(const int *v) { return __atomic_load_n(v, __ATOMIC_RELAXED); }
#else
#define LG_ATOMICS 0
static long lg_atomic_add(long *v, long d) { return *v += d; }
static long lg_atomic_get(long *v) { return *v; }
static void lg_flag_set(volatile sig_atomic_t *f) { *f = 1; }
static void lg_flag_clear(volatile sig_atomic_t *f) { *f = 0; }
static int lg_flag_get(volatile sig_atomic_t *f) { return *f; }
static void lg_gauge_add(int *v, int d) { *v += d; }
static int lg_gauge_get(const int *v) { return *v; }
#endif

/* The next '"' in [q, e), or e. Eight bytes at a time on little-endian
 * machines (has-zero on the word xor '"': the lowest flag is the first
 * quote, as borrows only run upwards from a true one); memchr elsewhere. */
static LG_INLINE const char *lg_next_quote(const char *q, const char *e)
{
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	while (q + 8 <= e) {
		uint64_t v, x, t;
		memcpy(&v, q, 8);
		x = v ^ 0x2222222222222222ULL;
		t = (x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL;
		if (t) return q + (__builtin_ctzll(t) >> 3);
		q += 8;
	}
	while (q < e && *q != '"') q++;
	return q;
#else
	const char *f = q < e ? (const char *)memchr(q, '"', (size_t)(e - q)) : NULL;
	return f ? f : e;
#endif
}

/* ===== 2. Buffers ====================================================== */

/* One growable byte buffer with a hard maximum. Data lives in p[off..len);
 * writing past max fails (and sets the sticky err flag) instead of
 * truncating silently. */
struct lg_buf {
	char *p;
	size_t off, len, cap, max;
	int err;
};

static void lg_buf_init(struct lg_buf *b, size_t max)
{
	memset(b, 0, sizeof *b);
	b->max = max;
}

static size_t lg_buf_used(const struct lg_buf *b) { return b->len - b->off; }
static void lg_buf_clear(struct lg_buf *b) { b->off = b->len = 0; }
static char *lg_buf_data(const struct lg_buf *b) { return b->off ? b->p + b->off : b->p; } /* NULL + 0 is UB */

static void lg_buf_free(struct lg_buf *b)
{
	free(b->p);
	b->p = NULL;
	b->off = b->len = b->cap = 0;
	b->err = 0;
}

/* Makes room for extra more bytes after len. -1 if that would pass max. */
static int lg_buf_reserve(struct lg_buf *b, size_t extra)
{
	size_t need, ncap;
	char *np;
	if (b->err) return -1;
	if (b->off && b->off == b->len) b->off = b->len = 0;
	if (b->len + extra <= b->cap) return 0;
	if (b->off && lg_buf_used(b) + extra <= b->cap) {
		memmove(b->p, b->p + b->off, lg_buf_used(b));
		b->len -= b->off;
		b->off = 0;
		return 0;
	}
	need = lg_buf_used(b) + extra;
	if (b->max && need > b->max) {
		b->err = 1;
		return -1;
	}
	ncap = b->cap ? b->cap : LLMGW_IO_BUF;
	while (ncap < need) ncap *= 2;
	if (b->max && ncap > b->max) ncap = b->max;
	if (b->off) {
		memmove(b->p, b->p + b->off, lg_buf_used(b));
		b->len -= b->off;
		b->off = 0;
	}
	np = (char *)realloc(b->p, ncap);
	if (!np) {
		b->err = 1;
		return -1;
	}
	b->p = np;
	b->cap = ncap;
	return 0;
}

static int lg_buf_add(struct lg_buf *b, const void *d, size_t n)
{
	if (b->len + n > b->cap || b->err || (b->off && b->off == b->len))
		if (lg_buf_reserve(b, n)) return -1;
	if (n) memcpy(b->p + b->len, d, n);
	b->len += n;
	return 0;
}

static int lg_buf_adds(struct lg_buf *b, lg_str s) { return lg_buf_add(b, s.p, s.n); }
static int lg_buf_addz(struct lg_buf *b, const char *z) { return lg_buf_add(b, z, strlen(z)); }
static int lg_buf_addc(struct lg_buf *b, char c)
{
	if (b->len < b->cap && !b->err && !(b->off && b->off == b->len)) { /* room: no call */
		b->p[b->len++] = c;
		return 0;
	}
	return lg_buf_add(b, &c, 1);
}

/* v in decimal (or hex) at the end of tmp; returns where it starts. */
static int lg_utoa(char tmp[24], uint64_t v, int hex)
{
	int i = 24;
	do {
		unsigned d = (unsigned)(hex ? v & 15 : v % 10);
		tmp[--i] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
		v = hex ? v >> 4 : v / 10;
	} while (v);
	return i;
}

/* A number in decimal (or hex): the hot paths avoid printf. */
static int lg_buf_addu(struct lg_buf *b, uint64_t v, int hex)
{
	char tmp[24];
	int i = lg_utoa(tmp, v, hex);
	return lg_buf_add(b, tmp + i, (size_t)(24 - i));
}

/* "%d" into out (12 bytes hold any int); returns the length. */
static size_t lg_itoa(char *out, int v)
{
	char tmp[24];
	int i = lg_utoa(tmp, v < 0 ? 0u - (unsigned)v : (unsigned)v, 0);
	size_t n;
	if (v < 0) tmp[--i] = '-';
	n = (size_t)(24 - i);
	memcpy(out, tmp + i, n);
	out[n] = 0;
	return n;
}

/* strlcpy: copies what fits, always terminates; returns the length copied. */
static size_t lg_cpy(char *dst, size_t n, const char *src)
{
	size_t k = src ? strlen(src) : 0;
	if (!n) return 0;
	if (k >= n) k = n - 1;
	if (k) memcpy(dst, src, k);
	dst[k] = 0;
	return k;
}

static int lg_buf_vprintf(struct lg_buf *b, const char *fmt, va_list ap)
{
	va_list cp;
	int n;
	size_t room = b->p && !b->err ? b->cap - b->len : 0;
	if (room > 1) { /* usually it fits: one pass */
		va_copy(cp, ap);
		n = vsnprintf(b->p + b->len, room, fmt, cp);
		va_end(cp);
		if (n >= 0 && (size_t)n < room) {
			b->len += (size_t)n;
			return 0;
		}
	}
	va_copy(cp, ap);
	n = vsnprintf(NULL, 0, fmt, cp);
	va_end(cp);
	if (n < 0 || lg_buf_reserve(b, (size_t)n)) return -1;
	if (b->cap - b->len > (size_t)n) { /* room for the terminating NUL too */
		vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	} else { /* output exactly fills the buffer: format aside */
		char *tmp = (char *)malloc((size_t)n + 1);
		if (!tmp) return -1;
		vsnprintf(tmp, (size_t)n + 1, fmt, ap);
		memcpy(b->p + b->len, tmp, (size_t)n);
		free(tmp);
	}
	b->len += (size_t)n;
	return 0;
}

static int lg_buf_printf(struct lg_buf *b, const char *fmt, ...) LG_PRINTF(2, 3);
static int lg_buf_printf(struct lg_buf *b, const char *fmt, ...)
{
	va_list ap;
	int r;
	va_start(ap, fmt);
	r = lg_buf_vprintf(b, fmt, ap);
	va_end(ap);
	return r;
}

static void lg_buf_consume(struct lg_buf *b, size_t n)
{
	b->off += n;
	if (b->off >= b->len) b->off = b->len = 0;
}

/* Gives memory back when a connection goes idle with an empty buffer. */
static void lg_buf_shrink(struct lg_buf *b)
{
	if (lg_buf_used(b) == 0 && b->cap > LLMGW_IO_BUF) lg_buf_free(b);
}

/* A bump allocator for a configuration snapshot: everything parsed from one
 * INI file is freed together when the last request using it ends. */
struct lg_arena_blk {
	struct lg_arena_blk *next;
	size_t used, cap;
	/* data follows, aligned as max_align_t would be */
};

struct lg_arena {
	struct lg_arena_blk *head;
	size_t chunk; /* block size, 0 = 8 KB */
};

static void *lg_arena_alloc(struct lg_arena *a, size_t n)
{
	struct lg_arena_blk *b = a->head;
	size_t hdr = (sizeof(struct lg_arena_blk) + 15) & ~(size_t)15;
	n = (n + 15) & ~(size_t)15;
	if (!b || b->used + n > b->cap) {
		size_t ch = a->chunk ? a->chunk : 8192, cap = n > ch ? n : ch;
		b = (struct lg_arena_blk *)malloc(hdr + cap);
		if (!b) return NULL;
		b->cap = cap;
		b->used = 0;
		b->next = a->head;
		a->head = b;
	}
	b->used += n;
	return memset((char *)b + hdr + b->used - n, 0, n);
}

static char *lg_arena_strn(struct lg_arena *a, const char *p, size_t n)
{
	char *s = (char *)lg_arena_alloc(a, n + 1);
	if (s) {
		memcpy(s, p, n);
		s[n] = 0;
	}
	return s;
}

/* Empties the arena for reuse: its first (oldest) block stays. */
static void lg_arena_reset(struct lg_arena *a)
{
	while (a->head && a->head->next) {
		struct lg_arena_blk *n = a->head->next;
		free(a->head);
		a->head = n;
	}
	if (a->head) a->head->used = 0;
}

static void lg_arena_free(struct lg_arena *a)
{
	while (a->head) {
		struct lg_arena_blk *n = a->head->next;
		free(a->head);
		a->head = n;
	}
}

/* ===== 3. Log ========================================================== */

enum { LG_LOG_ERROR, LG_LOG_WARN, LG_LOG_INFO, LG_LOG_DEBUG };
/* enum values: arrays of LG_ENUM_LEN chars, not pointers (no relocations); "" ends a list */
#define LG_ENUM_LEN 12
static const char lg_log_names[][LG_ENUM_LEN] = {"error", "warn", "info", "debug", ""};

/* Diagnostics go to stderr, one line each, with a UTC timestamp. The level
 * lives on the gateway so two instances can log differently. */
static void lg_log_v(int level, int max, const char *fmt, va_list ap)
{
	char line[1024];
	time_t t;
	struct tm tm;
	int n;
	if (level > max) return;
	t = time(NULL);
	gmtime_r(&t, &tm);
	n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02dZ llmgw %s: ",
	             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
	             tm.tm_sec, lg_log_names[level]);
	if (n < 0) return;
	vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	n = (int)strlen(line);
	line[n++] = '\n';
	if (write(2, line, (size_t)n) < 0) { /* nowhere left to report it */
	}
}

static void lg_log_at(int max, int level, const char *fmt, ...) LG_PRINTF(3, 4);
static void lg_log_at(int max, int level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	lg_log_v(level, max, fmt, ap);
	va_end(ap);
}

/* Logs through a gateway's level; expands where struct llmgw is complete. */
#define LG_LOG(gw, level, ...) lg_log_at((gw)->log_level, (level), __VA_ARGS__)

/* ===== 4. JSON ========================================================= */

/* A tokenizer in the manner of jsmn, but strict (RFC 8259) and with the
 * byte offset of the first error. It never allocates: the caller gives the
 * token array. Each token records where its subtree ends (next), so
 * siblings are skipped in O(1). String tokens span the content between the
 * quotes, still escaped; other tokens span their whole text. */
enum { LG_J_NONE, LG_J_OBJ, LG_J_ARR, LG_J_STR, LG_J_NUM, LG_J_TRUE, LG_J_FALSE, LG_J_NULL };

struct lg_jtok {
	uint32_t start, end; /* byte offsets [start, end) */
	uint32_t next;       /* index of the first token after this subtree */
	uint32_t size;       /* object: members; array: elements */
	uint8_t type;
};

#define LG_JSON_ERR -1     /* malformed: err and err_off say what and where */
#define LG_JSON_NOMEM -2   /* more tokens than the array holds */
#define LG_JSON_PARTIAL -3 /* input ended inside a value: need more */

struct lg_json {
	struct lg_jtok *t; /* NULL: only count tokens */
	uint32_t cap, n;
	const char *err;
	size_t err_off;
};

static LG_INLINE size_t lg_json_ws(const char *s, size_t n, size_t i)
{
	/* one comparison for the usual non-blank byte */
	while (i < n && (unsigned char)s[i] <= ' ' && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
		i++;
	return i;
}

static int lg_json_err(struct lg_json *j, const char *what, size_t off)
{
	j->err = what;
	j->err_off = off;
	return LG_JSON_ERR;
}

static int lg_json_fail(struct lg_json *j, const char *what, size_t off, size_t n)
{
	j->err = off >= n ? "unexpected end of input" : what;
	j->err_off = off;
	return off >= n ? LG_JSON_PARTIAL : LG_JSON_ERR;
}

/* Which bytes need no attention inside a JSON string: all but control
 * characters, '"' and '\\'. */
static const unsigned char lg_json_plain[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

/* Scans a string starting after its opening quote; returns the offset of
 * the closing quote, or a negative code. */
static LG_INLINE long lg_json_scan_str(struct lg_json *j, const char *s, size_t n, size_t i)
{
	for (; i < n; i++) {
		unsigned char c;
		/* the common case: plain characters, eight at a time. A word holds a
		 * byte to look at when one is '"', '\\' or below 0x20 (the has-zero
		 * and has-less bit tricks); on little-endian machines the lowest flag
		 * marks the first such byte (flags above it may be false: the byte
		 * loop below checks). */
		while (i + 8 <= n) {
			uint64_t v, q, b, t;
			memcpy(&v, s + i, 8);
			q = v ^ 0x2222222222222222ULL;
			b = v ^ 0x5C5C5C5C5C5C5C5CULL;
			t = (((q - 0x0101010101010101ULL) & ~q) | ((b - 0x0101010101010101ULL) & ~b) |
			     ((v - 0x2020202020202020ULL) & ~v)) & 0x8080808080808080ULL;
			if (t) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
				i += (size_t)__builtin_ctzll(t) >> 3;
#endif
				break;
			}
			i += 8;
		}
		while (i < n && lg_json_plain[(unsigned char)s[i]]) i++;
		if (i >= n) break;
		c = (unsigned char)s[i];
		if (c == '"') return (long)i;
		if (c < 0x20) return lg_json_fail(j, "control character in string", i, n);
		if (c == '\\') {
			if (++i >= n) break;
			c = (unsigned char)s[i];
			if (c == 'u') {
				int k;
				for (k = 0; k < 4; k++) {
					if (++i >= n) return lg_json_fail(j, "", i, n);
					if (lg_hexval(s[i]) < 0)
						return lg_json_fail(j, "bad \\u escape", i, n);
				}
			} else if (!strchr("\"\\/bfnrt", c) || c == 0) {
				return lg_json_fail(j, "bad escape in string", i, n);
			}
		}
	}
	return lg_json_fail(j, "", n, n);
}

static long lg_json_scan_num(struct lg_json *j, const char *s, size_t n, size_t i)
{
	size_t st;
	if (i < n && s[i] == '-') i++;
	if (i >= n) return lg_json_fail(j, "", i, n);
	if (s[i] == '0') {
		i++;
	} else if (s[i] >= '1' && s[i] <= '9') {
		while (i < n && s[i] >= '0' && s[i] <= '9') i++;
	} else {
		return lg_json_fail(j, "bad number", i, n);
	}
	if (i < n && s[i] == '.') {
		st = ++i;
		while (i < n && s[i] >= '0' && s[i] <= '9') i++;
		if (i == st) return lg_json_fail(j, "bad number: digit expected after '.'", i, n);
	}
	if (i < n && (s[i] == 'e' || s[i] == 'E')) {
		i++;
		if (i < n && (s[i] == '+' || s[i] == '-')) i++;
		st = i;
		while (i < n && s[i] >= '0' && s[i] <= '9') i++;
		if (i == st) return lg_json_fail(j, "bad number: digit expected in exponent", i, n);
	}
	return (long)i;
}

/* Tokenizes s[0..n). Returns the token count, or LG_JSON_ERR,
 * LG_JSON_NOMEM, LG_JSON_PARTIAL. A document is exactly one value with
 * optional surrounding whitespace. Three states, as labels: a value is
 * expected, an object key is expected, a value just ended. Counting only
 * (j->t NULL) writes every token into one scratch token (mask 0), so the
 * paths have no branch on the mode. */
static int lg_json_parse(struct lg_json *j, const char *s, size_t n)
{
	uint32_t stk[LLMGW_JSON_DEPTH];
	unsigned char stype[LLMGW_JSON_DEPTH];
	struct lg_jtok one, *t = j->t ? j->t : &one, *tk;
	uint32_t mask = j->t ? 0xFFFFFFFFu : 0, cap = j->t ? j->cap : 0xFFFFFFFFu;
	int depth = 0;
	size_t i = 0;
	uint32_t ntok = 0, me;
	long e;

	memset(&one, 0, sizeof one);
	j->err = NULL;
	j->err_off = 0;
	j->n = 0;
value:
	i = lg_json_ws(s, n, i);
	if (i >= n) return lg_json_fail(j, "", i, n);
	me = ntok++;
	if (ntok > LLMGW_JSON_TOKENS) return lg_json_err(j, "too many JSON tokens", i);
	if (me >= cap) return LG_JSON_NOMEM;
	if (depth && stype[depth - 1] == LG_J_ARR) t[stk[depth - 1] & mask].size++;
	tk = &t[me & mask];
	tk->start = (uint32_t)i;
	tk->size = 0;
	tk->next = me + 1;
	switch (s[i]) {
	case '"':
		if ((e = lg_json_scan_str(j, s, n, i + 1)) < 0) return (int)e;
		tk->type = LG_J_STR;
		tk->start = (uint32_t)(i + 1);
		tk->end = (uint32_t)e;
		i = (size_t)e + 1;
		goto after;
	case '{':
	case '[': {
		unsigned char ty = s[i] == '{' ? LG_J_OBJ : LG_J_ARR;
		if (depth >= LLMGW_JSON_DEPTH) return lg_json_err(j, "nesting too deep", i);
		tk->type = ty;
		stk[depth] = me;
		stype[depth++] = ty;
		i = lg_json_ws(s, n, i + 1);
		if (i < n && s[i] == (ty == LG_J_OBJ ? '}' : ']')) { /* empty */
			depth--;
			tk->end = (uint32_t)(i + 1);
			tk->next = ntok;
			i++;
			goto after;
		}
		if (ty == LG_J_OBJ) goto key;
		goto value;
	}
	case 't':
	case 'f':
	case 'n': {
		const char *lit = s[i] == 't' ? "true" : s[i] == 'f' ? "false" : "null";
		size_t k, ln = s[i] == 'f' ? 5 : 4;
		for (k = 0; k < ln; k++)
			if (i + k >= n || s[i + k] != lit[k]) return lg_json_fail(j, "invalid literal", i + k, n);
		tk->type = s[i] == 't' ? LG_J_TRUE : s[i] == 'f' ? LG_J_FALSE : LG_J_NULL;
		tk->end = (uint32_t)(i + ln);
		i += ln;
		goto after;
	}
	default:
		if (s[i] == '-' || (s[i] >= '0' && s[i] <= '9')) {
			if ((e = lg_json_scan_num(j, s, n, i)) < 0) return (int)e;
			/* a number running into the end may continue: need more */
			if ((size_t)e >= n && depth) return lg_json_fail(j, "", n, n);
			tk->type = LG_J_NUM;
			tk->end = (uint32_t)e;
			i = (size_t)e;
			goto after;
		}
		return lg_json_fail(j, "unexpected character", i, n);
	}
key:
	i = lg_json_ws(s, n, i);
	if (i >= n || s[i] != '"') return lg_json_fail(j, "object key (a string) expected", i, n);
	me = ntok++;
	if (ntok > LLMGW_JSON_TOKENS) return lg_json_err(j, "too many JSON tokens", i);
	if ((e = lg_json_scan_str(j, s, n, i + 1)) < 0) return (int)e;
	if (me >= cap) return LG_JSON_NOMEM;
	tk = &t[me & mask];
	tk->type = LG_J_STR;
	tk->start = (uint32_t)(i + 1);
	tk->end = (uint32_t)e;
	tk->next = me + 1;
	tk->size = 0;
	t[stk[depth - 1] & mask].size++;
	i = lg_json_ws(s, n, (size_t)e + 1);
	if (i >= n || s[i] != ':') return lg_json_fail(j, "':' expected after object key", i, n);
	i++;
	goto value;
after:
	i = lg_json_ws(s, n, i);
	if (depth == 0) {
		if (i < n) return lg_json_fail(j, "trailing characters after the JSON value", i, n);
		j->n = ntok;
		return (int)ntok;
	}
	if (i >= n) return lg_json_fail(j, "", i, n);
	if (s[i] == ',') {
		i++;
		if (stype[depth - 1] == LG_J_OBJ) goto key;
		goto value;
	}
	if (s[i] == (stype[depth - 1] == LG_J_OBJ ? '}' : ']')) {
		me = stk[--depth];
		t[me & mask].end = (uint32_t)(i + 1);
		t[me & mask].next = ntok;
		i++;
		goto after;
	}
	return lg_json_fail(j, stype[depth - 1] == LG_J_OBJ ? "',' or '}' expected" : "',' or ']' expected", i, n);
}

/* The members of an object, in order, one per lg_json_next:
 *   struct lg_jit it = lg_json_iter(j, t);
 *   while (lg_json_next(j, &it)) ... it.key (its name), it.val ...
 * Anything but an object (or -1) has none. */
struct lg_jit {
	int key, val;
	uint32_t at, left; /* the next member's key token; members left */
};

static LG_INLINE struct lg_jit lg_json_iter(const struct lg_json *j, int t)
{
	struct lg_jit it;
	it.key = it.val = -1;
	it.at = (uint32_t)t + 1; /* the first member follows the object's token */
	it.left = t >= 0 && j->t[t].type == LG_J_OBJ ? j->t[t].size : 0;
	return it;
}

static LG_INLINE int lg_json_next(const struct lg_json *j, struct lg_jit *it)
{
	if (!it->left) return 0;
	it->left--;
	it->key = (int)it->at;
	it->val = (int)it->at + 1;
	it->at = j->t[it->at + 1].next;
	return 1;
}

/* The value of key (kl bytes) in the object at token obj, or -1. */
static int lg_json_getn(const struct lg_json *j, const char *s, int obj, const char *key, size_t kl)
{
	uint32_t k, m; /* by hand, not lg_json_iter: this is the hottest loop of a request */
	if (obj < 0 || j->t[obj].type != LG_J_OBJ) return -1;
	k = (uint32_t)obj + 1;
	for (m = 0; m < j->t[obj].size; m++) {
		const struct lg_jtok *kt = &j->t[k];
		if (kt->end - kt->start == kl && (kl == 0 || s[kt->start] == key[0]) && memcmp(s + kt->start, key, kl) == 0)
			return (int)k + 1;
		k = j->t[k + 1].next;
	}
	return -1;
}
/* keys are literals nearly always: their length is then a constant */
#define lg_json_get(j, s, obj, key) lg_json_getn((j), (s), (obj), (key), strlen(key))

/* The i-th element of an array token, or -1. */
static int lg_json_at(const struct lg_json *j, int arr, uint32_t i)
{
	uint32_t k;
	if (arr < 0 || j->t[arr].type != LG_J_ARR || i >= j->t[arr].size) return -1;
	k = (uint32_t)arr + 1;
	while (i--) k = j->t[k].next;
	return (int)k;
}

/* The raw text of a token: a string's escaped content, or a value's text.
 * Valid as long as s is. */
static lg_str lg_json_raw(const struct lg_json *j, const char *s, int t)
{
	return lg_str_of(s + j->t[t].start, j->t[t].end - j->t[t].start);
}

/* The whole text of a token, quotes included for strings. */
static lg_str lg_json_span(const struct lg_json *j, const char *s, int t)
{
	lg_str r = lg_json_raw(j, s, t);
	if (j->t[t].type == LG_J_STR) r.p--, r.n += 2;
	return r;
}

static int lg_json_type(const struct lg_json *j, int t) { return t < 0 ? LG_J_NONE : j->t[t].type; }

static int lg_json_truthy(const struct lg_json *j, int t) { return lg_json_type(j, t) == LG_J_TRUE; }

static double lg_json_num(const struct lg_json *j, const char *s, int t, double dflt)
{
	char tmp[400];
	lg_str r;
	if (lg_json_type(j, t) != LG_J_NUM) return dflt;
	r = lg_json_raw(j, s, t);
	if (r.n && r.n <= 15 && r.p[0] != '-') { /* token counts: plain integers, exact in a double */
		size_t i;
		uint64_t u = 0;
		for (i = 0; i < r.n && r.p[i] >= '0' && r.p[i] <= '9'; i++) u = u * 10 + (uint64_t)(r.p[i] - '0');
		if (i == r.n) return (double)u;
	}
	if (r.n >= sizeof tmp) return dflt;
	memcpy(tmp, r.p, r.n);
	tmp[r.n] = 0;
	return strtod(tmp, NULL);
}

/* The UTF-8 sequence at s (s[0] >= 0x80, n >= 1 bytes): its length when
 * it is well formed, else minus the length of its maximal ill-formed
 * subpart (Unicode 3.9: each such subpart becomes one U+FFFD). */
static int lg_utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0], lo = 0x80, hi = 0xBF;
	int len, k;
	if (c >= 0xC2 && c <= 0xDF) len = 2;
	else if (c >= 0xE0 && c <= 0xEF) len = 3;
	else if (c >= 0xF0 && c <= 0xF4) len = 4;
	else return -1;
	if (c == 0xE0) lo = 0xA0;
	if (c == 0xED) hi = 0x9F;
	if (c == 0xF0) lo = 0x90;
	if (c == 0xF4) hi = 0x8F;
	for (k = 1; k < len; k++) {
		if ((size_t)k >= n || s[k] < lo || s[k] > hi) return -k;
		lo = 0x80, hi = 0xBF;
	}
	return len;
}

/* Is s[0..n) well-formed UTF-8? (fast for ASCII) */
static int lg_utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;
	while (i < n) {
		int k;
		uint64_t w;
		if (i + 8 <= n) { /* eight ASCII bytes at a time */
			memcpy(&w, p + i, 8);
			if (!(w & 0x8080808080808080ull)) {
				i += 8;
				continue;
			}
		}
		if (p[i] < 0x80) {
			i++;
			continue;
		}
		if ((k = lg_utf8_seq(p + i, n - i)) < 0) return 0;
		i += (size_t)k;
	}
	return 1;
}

/* s with each ill-formed subpart replaced by U+FFFD, in t. */
static LG_COLD lg_str lg_utf8_fix(struct lg_buf *t, lg_str s)
{
	const unsigned char *p = (const unsigned char *)s.p;
	size_t i = 0, run = 0;
	lg_buf_init(t, 0);
	while (i < s.n) {
		int k = p[i] < 0x80 ? 1 : lg_utf8_seq(p + i, s.n - i);
		if (k > 0) {
			i += (size_t)k;
			continue;
		}
		lg_buf_add(t, s.p + run, i - run);
		lg_buf_add(t, "\xEF\xBF\xBD", 3);
		i += (size_t)-k;
		run = i;
	}
	lg_buf_add(t, s.p + run, s.n - run);
	return t->err ? lg_str_of("", 0) : lg_str_of(t->p ? t->p : "", t->len);
}

static void lg_utf8_put(char **o, uint32_t cp)
{
	unsigned char *p = (unsigned char *)*o;
	if (cp < 0x80) {
		*p++ = (unsigned char)cp;
	} else if (cp < 0x800) {
		*p++ = (unsigned char)(0xC0 | (cp >> 6));
		*p++ = (unsigned char)(0x80 | (cp & 0x3F));
	} else if (cp < 0x10000) {
		*p++ = (unsigned char)(0xE0 | (cp >> 12));
		*p++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
		*p++ = (unsigned char)(0x80 | (cp & 0x3F));
	} else {
		*p++ = (unsigned char)(0xF0 | (cp >> 18));
		*p++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
		*p++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
		*p++ = (unsigned char)(0x80 | (cp & 0x3F));
	}
	*o = (char *)p;
}

static uint32_t lg_hex4(const char *p)
{
	return (uint32_t)(lg_hexval(p[0]) << 12 | lg_hexval(p[1]) << 8 | lg_hexval(p[2]) << 4 |
	                  lg_hexval(p[3]));
}

/* Unescapes the content of a JSON string (as the tokenizer validated it)
 * into out, which needs n bytes: the result is never longer. \uXXXX pairs
 * become UTF-8; a lone surrogate becomes U+FFFD. Returns the length, or -1
 * on a malformed escape. */
static long lg_json_unescape(const char *p, size_t n, char *out)
{
	char *o = out;
	size_t i;
	for (i = 0; i < n; i++) {
		uint32_t cp;
		if (p[i] != '\\') {
			*o++ = p[i];
			continue;
		}
		if (++i >= n) return -1;
		switch (p[i]) {
		case '"': *o++ = '"'; break;
		case '\\': *o++ = '\\'; break;
		case '/': *o++ = '/'; break;
		case 'b': *o++ = '\b'; break;
		case 'f': *o++ = '\f'; break;
		case 'n': *o++ = '\n'; break;
		case 'r': *o++ = '\r'; break;
		case 't': *o++ = '\t'; break;
		case 'u':
			if (n - i < 5) return -1; /* need 4 hex digits */
			{
				int k;
				for (k = 1; k <= 4; k++)
					if (lg_hexval(p[i + (size_t)k]) < 0) return -1;
			}
			cp = lg_hex4(p + i + 1);
			i += 4;
			if (cp >= 0xD800 && cp <= 0xDBFF) {
				if (n - i >= 7 && p[i + 1] == '\\' && p[i + 2] == 'u' &&
				    lg_hexval(p[i + 3]) >= 0 && lg_hexval(p[i + 4]) >= 0 &&
				    lg_hexval(p[i + 5]) >= 0 && lg_hexval(p[i + 6]) >= 0) {
					uint32_t lo = lg_hex4(p + i + 3);
					if (lo >= 0xDC00 && lo <= 0xDFFF) {
						cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
						i += 6;
					} else {
						cp = 0xFFFD;
					}
				} else {
					cp = 0xFFFD;
				}
			} else if (cp >= 0xDC00 && cp <= 0xDFFF) {
				cp = 0xFFFD;
			}
			lg_utf8_put(&o, cp);
			break;
		default: return -1;
		}
	}
	return o - out;
}

/* Writes s as a JSON string, quotes included. */
static int lg_json_wstr(struct lg_buf *b, const char *s, size_t n)
{
	static const char hx[] = "0123456789abcdef";
	size_t i, run = 0;
	if (lg_buf_reserve(b, n + 2)) return -1;
	lg_buf_addc(b, '"');
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		const char *esc = NULL;
		char u[7];
		if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') continue;
		if (c >= 0x80) { /* well-formed UTF-8 as it is, anything else as U+FFFD */
			int k = lg_utf8_seq((const unsigned char *)s + i, n - i);
			if (k > 0) {
				i += (size_t)k - 1;
				continue;
			}
			lg_buf_add(b, s + run, i - run);
			lg_buf_add(b, "\xEF\xBF\xBD", 3);
			i += (size_t)-k - 1;
			run = i + 1;
			continue;
		}
		lg_buf_add(b, s + run, i - run);
		switch (c) {
		case '"': esc = "\\\""; break;
		case '\\': esc = "\\\\"; break;
		case '\n': esc = "\\n"; break;
		case '\r': esc = "\\r"; break;
		case '\t': esc = "\\t"; break;
		case '\b': esc = "\\b"; break;
		case '\f': esc = "\\f"; break;
		default:
			u[0] = '\\', u[1] = 'u', u[2] = '0', u[3] = '0', u[4] = hx[c >> 4], u[5] = hx[c & 15];
			u[6] = 0;
			esc = u;
		}
		lg_buf_addz(b, esc);
		run = i + 1;
	}
	lg_buf_add(b, s + run, n - run);
	return lg_buf_addc(b, '"');
}

static int lg_json_wz(struct lg_buf *b, const char *z) { return z ? lg_json_wstr(b, z, strlen(z)) : lg_json_wstr(b, "", 0); }

static const double lg_p10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                   1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* snprintf(out, 32, "%.<p>g", v) for 1 <= p <= 15, without printf where it
 * can: v times a power of ten (exact up to 1e22) is rounded once, so the
 * p digits are right unless that product lies within its rounding error
 * of a half; then, and outside 1e-11..1e15, snprintf does it. Returns the
 * length. */
static size_t lg_fmt_g(char out[32], double v, int p)
{
	double a = v < 0 ? -v : v, m, f, fr;
	int e = 0, k, tries, nd, i, o = 0, z;
	uint64_t u = 0, top = (uint64_t)lg_p10[p > 0 && p <= 15 ? p : 1];
	char d[16];
	if (!(a >= 1e-11 && a < 1e15) || p < 1 || p > 15) goto slow;
	while (e < 15 && a >= lg_p10[e + 1]) e++;
	while (e <= 0 && e > -12 && a < 1.0 / lg_p10[-e]) e--;
	for (tries = 0;; tries++) {
		if (tries > 2) goto slow;
		k = p - 1 - e;
		if (k > 22 || k < -22) goto slow;
		m = k >= 0 ? a * lg_p10[k] : a / lg_p10[-k];
		f = (double)(uint64_t)m; /* m < 1e16: the integer part, exactly */
		fr = m - f;
		if (fabs(fr - 0.5) <= m * 4.5e-16 + 1e-300) goto slow; /* too close to call */
		u = (uint64_t)f + (fr > 0.5);
		if (u >= top) {
			if (u == top && f < (double)top) { /* 9.99..95 rounded up to 10.0 */
				u = top / 10;
				e++;
				break;
			}
			e++;
			continue;
		}
		if (u < top / 10) {
			e--;
			continue;
		}
		break;
	}
	for (i = p - 1; i >= 0; i--, u /= 10) d[i] = (char)('0' + u % 10);
	for (nd = p; nd > 1 && d[nd - 1] == '0'; nd--) {
	}
	if (v < 0) out[o++] = '-';
	if (e < -4 || e >= p) { /* d.ddde-XX */
		int ae = e < 0 ? -e : e;
		out[o++] = d[0];
		if (nd > 1) {
			out[o++] = '.';
			for (i = 1; i < nd; i++) out[o++] = d[i];
		}
		out[o++] = 'e';
		out[o++] = e < 0 ? '-' : '+';
		if (ae >= 100) out[o++] = (char)('0' + ae / 100);
		out[o++] = (char)('0' + ae / 10 % 10);
		out[o++] = (char)('0' + ae % 10);
	} else if (e >= 0) { /* ddd.ddd */
		for (i = 0; i <= e; i++) out[o++] = d[i];
		if (nd > e + 1) {
			out[o++] = '.';
			for (; i < nd; i++) out[o++] = d[i];
		}
	} else { /* 0.000ddd */
		out[o++] = '0';
		out[o++] = '.';
		for (z = -e - 1; z > 0; z--) out[o++] = '0';
		for (i = 0; i < nd; i++) out[o++] = d[i];
	}
	out[o] = 0;
	return (size_t)o;
slow:
	o = snprintf(out, 32, "%.*g", p, v);
	return o < 0 ? 0 : (size_t)LG_MIN(o, 31);
}

/* Numbers: integers print as integers, the rest with enough digits to
 * round-trip a cost in USD. */
static int lg_json_wnum(struct lg_buf *b, double v)
{
	char t[32];
	if (!isfinite(v)) return lg_buf_addz(b, "0");
	if (v > -1e15 && v < 1e15 && v == (double)(int64_t)v) {
		if (v < 0) lg_buf_addc(b, '-');
		return lg_buf_addu(b, (uint64_t)(v < 0 ? -v : v), 0);
	}
	return lg_buf_add(b, t, lg_fmt_g(t, v, 12));
}

/* A string token's text as it is (escaped), a number token's text, a
 * count: empty or 0 when the token is absent or of another type. */
static lg_str lg_jesc(const struct lg_json *j, const char *s, int t)
{
	return lg_json_type(j, t) == LG_J_STR ? lg_json_raw(j, s, t) : lg_str_of("", 0);
}

static lg_str lg_jnum(const struct lg_json *j, const char *s, int t)
{
	return lg_json_type(j, t) == LG_J_NUM ? lg_json_raw(j, s, t) : lg_str_of("", 0);
}

static int64_t lg_json_i64(const struct lg_json *j, const char *s, int t)
{
	double d = lg_json_num(j, s, t, 0);
	return d > 0 && d < 9e15 ? (int64_t)d : 0;
}

/* A name as a JSON string into out (quotes included) when it needs no
 * escaping, as names nearly always do; 0 otherwise. */
static size_t lg_json_plainz(char *out, size_t cap, const char *z)
{
	size_t n = 0;
	out[n++] = '"';
	for (; *z; z++) {
		if (!lg_json_plain[(unsigned char)*z] || n + 2 >= cap) return 0;
		out[n++] = *z;
	}
	out[n++] = '"';
	return n;
}

/* ===== 5. INI and config =============================================== */

/* The INI reader: one item per call, never allocating. Comments start with
 * ';' or '#' at the start of a line or after whitespace. */
enum { LG_INI_END, LG_INI_SECTION, LG_INI_KEY, LG_INI_ERROR };

struct lg_ini {
	const char *s;
	size_t n, pos;
	int line;
	lg_str section, key, value; /* views into s */
	const char *err;
};

static LG_COLD int lg_ini_next(struct lg_ini *in)
{
	while (in->pos < in->n) {
		size_t st = in->pos, e, i;
		lg_str l;
		while (in->pos < in->n && in->s[in->pos] != '\n') in->pos++;
		e = in->pos;
		if (in->pos < in->n) in->pos++;
		in->line++;
		for (i = st; i < e; i++) { /* a NUL would cut a value short: refuse every control byte but tab */
			unsigned char ch = (unsigned char)in->s[i];
			if ((ch < 0x20 && ch != '\t' && !(ch == '\r' && i + 1 == e)) || ch == 0x7f) {
				in->err = ch ? "a control character (other than tab) in the line" : "a NUL byte in the line";
				return LG_INI_ERROR;
			}
		}
		/* strip comments: ';' or '#' at the start or after a blank */
		for (i = st; i < e; i++)
			if ((in->s[i] == ';' || in->s[i] == '#') &&
			    (i == st || in->s[i - 1] == ' ' || in->s[i - 1] == '\t'))
				break;
		l = lg_str_trim(lg_str_of(in->s + st, i - st));
		if (l.n == 0) continue;
		if (l.p[0] == '[') {
			if (l.p[l.n - 1] != ']') {
				in->err = "section header without closing ']'";
				return LG_INI_ERROR;
			}
			in->section = lg_str_trim(lg_str_of(l.p + 1, l.n - 2));
			return LG_INI_SECTION;
		}
		for (i = 0; i < l.n && l.p[i] != '='; i++) {
		}
		if (i == l.n) {
			in->err = "expected 'key = value'";
			return LG_INI_ERROR;
		}
		in->key = lg_str_trim(lg_str_of(l.p, i));
		in->value = lg_str_trim(lg_str_of(l.p + i + 1, l.n - i - 1));
		if (in->key.n == 0) {
			in->err = "empty key before '='";
			return LG_INI_ERROR;
		}
		return LG_INI_KEY;
	}
	return LG_INI_END;
}

struct lg_prov_row; /* what differs between provider types (section 11) */

enum { LG_STRAT_ORDER, LG_STRAT_PRICE, LG_STRAT_LATENCY, LG_STRAT_THROUGHPUT, LG_STRAT_WEIGHTED };
static const char lg_strat_names[][LG_ENUM_LEN] = {"order", "price", "latency", "throughput", "weighted", ""};

enum { LG_PERIOD_DAY, LG_PERIOD_WEEK, LG_PERIOD_MONTH, LG_PERIOD_TOTAL };
static const char lg_period_names[][LG_ENUM_LEN] = {"day", "week", "month", "total", ""};

enum { LG_METRICS_ADMIN, LG_METRICS_PUBLIC, LG_METRICS_OFF };

struct lg_provider {
	const char *name;
	const struct lg_prov_row *row; /* its type; NULL until type = is read */
	int line;
	const char *base_url, *host, *base_path, *region, *api_key;
	const char *api_version; /* azure */
	const char *aws_region, *aws_access_key_id, *aws_secret_access_key, *aws_session_token; /* bedrock */
	int port, tls, zdr, collects_data, direct, max_concurrency;
	int responses; /* openai, azure: serves the Responses API (/v1/responses goes natively) */
	char origin[300]; /* "host:port" (+ "+tls"): the key of the upstream pool */
	char hosthdr[300]; /* the Host header: [v6] and a port when not the default */
	const char **headers; /* "Name: value" lines, validated */
	int nheaders;
};

/* A provider type: everything that differs between providers, as one row
 * of lg_prov_rows (section 11, next to the functions it names). Config
 * defaults, the request builder, the attempt logic and accounting read
 * the row; nothing else tests a provider's type. Functions left NULL take
 * the generic behaviour said next to them. */
struct lg_req;
struct lg_cand;
struct lg_hw;
/* a request format: a provider's, or the Responses API (OpenAI and Azure with responses = yes) */
enum { LG_WIRE_OPENAI, LG_WIRE_ANTHROPIC, LG_WIRE_GEMINI, LG_WIRE_BEDROCK, LG_WIRE_RESPONSES };
#define LG_CAP_EMBED 1 /* has /v1/embeddings */
struct lg_prov_row {
	const char *name;          /* type = in [provider.*] */
	const char *base_url;      /* the default; "%s" is aws_region; NULL: none (base_url required) */
	int wire;                  /* a client dialect of the same wire is forwarded natively */
	unsigned caps;             /* LG_CAP_ */
	int64_t image_tokens;      /* most prompt tokens one image part costs (target image_tokens =) */
	const char *stream_accept; /* the Accept header of a streamed request */
	const char *stream_ctype;  /* the Content-Type its stream must have; NULL: any */
	const char *frame_flush;   /* added after a stream's last bytes, so a last event without its end is read */
	/* config: what a provider of this type lacks (a message), or NULL */
	const char *(*check)(const struct lg_provider *p);
	/* the request path into fast (cap bytes) or pb; NULL on failure */
	const char *(*path)(const struct lg_req *r, const struct lg_cand *cd, char *fast, size_t cap,
	                    struct lg_buf *pb);
	/* extra head room its auth lines need beyond the api_key (NULL: none) */
	size_t (*auth_room)(const struct lg_provider *p);
	/* its auth lines; path and body for signatures */
	void (*auth)(struct lg_hw *w, const struct lg_req *r, const struct lg_provider *p, const char *path,
	             const char *body, size_t n);
	/* a translated chat body from the canonical request (NULL: the OpenAI writer); -2: cannot (canon_err) */
	int (*body)(struct lg_req *r, const struct lg_cand *cd, struct lg_buf *o);
	/* one framed event off the front of a stream: bytes used, 0: more needed, -1: damaged (err says) */
	long (*frame)(struct lg_req *r, const char *p, size_t n, const char **err);
	/* a translated stream event, and a whole translated response (0, or -1: malformed) */
	void (*event)(struct lg_req *r, lg_str ev, lg_str data);
	int (*full)(struct lg_req *r, const char *s, size_t n);
	/* embeddings body and response (NULL: OpenAI's, passed through) */
	void (*embed_body)(struct lg_req *r, const struct lg_cand *cd, struct lg_buf *o);
	int (*embed_full)(struct lg_req *r, const char *s, size_t n, struct lg_buf *o);
	/* a retry hint in an error body (Retry-After is read for every type), into r->retry_after_ms */
	void (*retry_hint)(struct lg_req *r, const char *b, size_t n);
	/* may this failed answer succeed on retry? */
	int (*retryable)(int status, const char *b, size_t n);
	/* no network: writes what an upstream of its wire would have sent (mock) */
	void (*run)(struct lg_req *r, struct lg_buf *o);
};
static const struct lg_prov_row *lg_prov_row_find(lg_str name); /* section 11 */
static const char *lg_prov_row_names(void);

struct lg_target {
	struct lg_provider *prov;
	const char *prov_name, *upstream, *quant;
	double in, out, cache_read, cache_write, weight; /* USD per million tokens */
	int64_t context, max_output; /* 64 bits: long is 32 on the 32-bit routers */
	int64_t image_tokens, audio_tokens, file_tokens; /* most prompt tokens one such part costs; -1: default */
	int line;
	/* prices above a prompt size (the catalog's long-context tiers): in, out, cache_read, cache_write */
	struct lg_price_tier {
		int64_t start; /* more prompt tokens than this: price */
		double price;
	} tier[4][LG_PRICE_TIERS];
	unsigned char ntier[4];
	unsigned char price_set; /* bits 0-3: in, out, cache_read, cache_write given on the target line */
	const char *price_src;   /* "ini", "catalog PROVIDER/MODEL", "ini+catalog ..."; NULL: no price */
};

struct lg_model {
	const char *name;
	struct lg_target *t;
	int nt, line, strategy;
	const char **fallbacks, **aliases;
	int nfallbacks, naliases;
	int64_t affinity_ms;
};

struct lg_key {
	const char *name;
	unsigned char hash[32]; /* SHA-256 of the secret: compared in constant time */
	const char **models, **regions;
	int nmodels, nregions, line, period, max_concurrency, zdr, data_deny;
	double budget;
	long rpm, tpm;
};

struct lg_cfg {
	long refs; /* the gateway (each loop) holds one; each request using it one more */
	struct lg_arena a;
	const char *path;
	const char **listen;
	int nlisten, workers, max_attempts, metrics, auth_none, zdr, log_level;
	long max_connections;
	size_t max_body, max_header;
	int64_t header_timeout, idle_timeout, connect_timeout, first_byte_timeout,
	    stream_idle_timeout, shutdown_timeout, send_timeout, body_timeout;
	const char *ca_file, *tls_cert, *tls_key, *proxy, *admin_key, *access_log, *state_dir;
	const char *prices; /* the price catalog (section 5b); prices_line: where it was set */
	int prices_line;
	struct lg_provider **prov;
	struct lg_model **models;
	struct lg_key **keys;
	int nprov, nmodels, nkeys;
	int auth_line, tls_line, proxy_line, log_line, state_line; /* where those keys were, for errors */
	unsigned long gen;                   /* which install: cached key lookups check it */
	int *listen_lines;
	/* upstream CONNECT proxy (proxy = or HTTPS_PROXY), for https upstreams */
	const char *proxy_host, *proxy_auth, *no_proxy;
	int proxy_port;
	/* [store]: the state store shared by several gateways (section 13g);
	 * store_kind 0 = none (the in-process store) */
	const char *store_url, *store_prefix, *store_instance;
	int64_t store_timeout, store_records, store_lease;
	int store_on_error, store_line, store_sec; /* store_sec: the line of [store] */
	int store_kind, store_port, store_db;      /* LG_STORE_TCP or LG_STORE_UNIX */
	int store_tls;                             /* rediss://: TLS, verified like https upstreams */
	const char *store_host, *store_user, *store_pass, *store_path, *store_name; /* store_name: the url
	                                                                 without its password, for messages */
#if LLMGW_TLS
	br_x509_trust_anchor *ta; /* from ca_file or the system bundle */
	size_t nta;
	const char *ca_path;
	br_x509_certificate *chain; /* tls_cert: the listener's chain */
	size_t nchain;
	int skey_type; /* BR_KEYTYPE_RSA or BR_KEYTYPE_EC */
	br_rsa_private_key rsa;
	br_ec_private_key ec;
#endif
};

/* Names seen while parsing, hashed, so duplicate checks stay linear in
 * the size of the file: sections (kind 'p', 'k'), model names and aliases
 * ('m'); and, in a table of their own, each section's keys (kind: which
 * section). */
struct lg_name {
	const char *p;
	size_t n;
	int kind, line;
	void *owner;
};

struct lg_names {
	struct lg_name *t;
	size_t cap, n;
};

/* Parse context: the file name and line for error messages. */
struct lg_cfgp {
	struct lg_cfg *c;
	const char *file;
	int line;
	char *err;
	size_t errlen;
	struct lg_names names, keys; /* keys: the keys set, by section */
};

static uint32_t lg_name_hash(int kind, const char *p, size_t n)
{
	uint32_t h = 2166136261u ^ (uint32_t)kind;
	size_t i;
	for (i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 16777619u;
	return h;
}

/* The entry for (kind, name); with add, a new one is made when there is
 * none (its line 0 tells the caller it is new). NULL: out of memory. */
static struct lg_name *lg_names_get(struct lg_names *s, int kind, const char *p, size_t n, int add)
{
	size_t i;
	if (add && (s->n + 1) * 2 > s->cap) { /* grow at half full */
		struct lg_names g;
		g.cap = s->cap ? s->cap * 2 : 64;
		g.n = 0;
		if (!(g.t = (struct lg_name *)calloc(g.cap, sizeof *g.t))) return NULL;
		for (i = 0; i < s->cap; i++)
			if (s->t[i].p) *lg_names_get(&g, s->t[i].kind, s->t[i].p, s->t[i].n, 1) = s->t[i];
		free(s->t);
		*s = g;
	}
	if (!s->cap) return NULL;
	for (i = lg_name_hash(kind, p, n) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
		struct lg_name *e = &s->t[i];
		if (!e->p) {
			if (!add) return NULL;
			e->p = p, e->n = n, e->kind = kind, e->line = 0, e->owner = NULL;
			s->n++;
			return e;
		}
		if (e->kind == kind && e->n == n && memcmp(e->p, p, n) == 0) return e;
	}
}

static int lg_cfg_err(struct lg_cfgp *p, const char *fmt, ...) LG_PRINTF(2, 3);
static LG_COLD int lg_cfg_err(struct lg_cfgp *p, const char *fmt, ...)
{
	va_list ap;
	int n = snprintf(p->err, p->errlen, "%s:%d: ", p->file, p->line);
	va_start(ap, fmt);
	if (n >= 0 && (size_t)n < p->errlen) vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
	va_end(ap);
	return -1;
}

/* Grows an arena-held array by one zeroed element; returns it. */
static LG_COLD void *lg_cfg_push(struct lg_cfg *c, void *arrp, int *n, size_t el)
{
	void **arr = (void **)arrp;
	if (*n == 0 || (*n >= 4 && (*n & (*n - 1)) == 0)) { /* capacity 4, 8, 16, ... */
		size_t cap = *n ? (size_t)*n * 2 : 4;
		char *na = (char *)lg_arena_alloc(&c->a, cap * el);
		if (!na) return NULL;
		if (*n) memcpy(na, *arr, (size_t)*n * el);
		*arr = na;
	}
	return memset((char *)*arr + (size_t)(*n)++ * el, 0, el);
}

static char *lg_cfg_str(struct lg_cfg *c, lg_str s) { return lg_arena_strn(&c->a, s.p, s.n); }

/* Splits a comma-separated list into arena strings. */
static LG_COLD int lg_cfg_list(struct lg_cfgp *p, lg_str v, const char ***out, int *n)
{
	size_t i = 0, st;
	while (i < v.n) {
		lg_str item;
		const char **slot;
		st = i;
		while (i < v.n && v.p[i] != ',') i++;
		item = lg_str_trim(lg_str_of(v.p + st, i - st));
		i++;
		if (!item.n) continue;
		slot = (const char **)lg_cfg_push(p->c, out, n, sizeof *slot);
		if (!slot || !(*slot = lg_cfg_str(p->c, item))) return lg_cfg_err(p, "out of memory");
	}
	return 0;
}

static LG_COLD int lg_cfg_bool(struct lg_cfgp *p, lg_str v, int *out)
{
	if (lg_str_ieq(v, "yes") || lg_str_ieq(v, "true") || lg_str_ieq(v, "on") || lg_str_eq(v, "1"))
		*out = 1;
	else if (lg_str_ieq(v, "no") || lg_str_ieq(v, "false") || lg_str_ieq(v, "off") ||
	         lg_str_eq(v, "0"))
		*out = 0;
	else
		return lg_cfg_err(p, "expected yes or no, got '%.*s'", (int)v.n, v.p);
	return 0;
}

/* Parses a decimal number into *out; unit gets the rest of the text. */
static LG_COLD int lg_cfg_number(lg_str v, double *out, lg_str *unit)
{
	char tmp[64], *end;
	if (v.n == 0 || v.n >= sizeof tmp) return -1;
	memcpy(tmp, v.p, v.n);
	tmp[v.n] = 0;
	if (!(tmp[0] >= '0' && tmp[0] <= '9') && tmp[0] != '.') return -1;
	*out = strtod(tmp, &end);
	if (end == tmp || !isfinite(*out)) return -1;
	*unit = lg_str_trim(lg_str_of(v.p + (end - tmp), v.n - (size_t)(end - tmp)));
	return 0;
}

static LG_COLD int lg_cfg_long(struct lg_cfgp *p, lg_str v, long *out)
{
	double d;
	lg_str u;
	if (lg_cfg_number(v, &d, &u) || u.n || d > 2e9 || d != (double)(long)d)
		return lg_cfg_err(p, "expected a whole number, got '%.*s'", (int)v.n, v.p);
	*out = (long)d;
	return 0;
}

/* "16m", "32k", "512" -> bytes */
static LG_COLD int lg_cfg_size(struct lg_cfgp *p, lg_str v, size_t *out)
{
	double d, mul = 1;
	lg_str u;
	if (lg_cfg_number(v, &d, &u)) goto bad;
	if (u.n == 0 || lg_str_ieq(u, "b"))
		mul = 1;
	else if (lg_str_ieq(u, "k") || lg_str_ieq(u, "kb"))
		mul = 1024;
	else if (lg_str_ieq(u, "m") || lg_str_ieq(u, "mb"))
		mul = 1048576;
	else if (lg_str_ieq(u, "g") || lg_str_ieq(u, "gb"))
		mul = 1073741824.0;
	else
		goto bad;
	if (d * mul > 4294967295.0) goto bad;
	*out = (size_t)(d * mul);
	return 0;
bad:
	return lg_cfg_err(p, "expected a size like 512, 32k or 16m, got '%.*s'", (int)v.n, v.p);
}

/* "10s", "500ms", "2m", "1h"; a bare number is seconds -> milliseconds */
static LG_COLD int lg_cfg_duration_of(lg_str v, int64_t *out)
{
	double d, mul;
	lg_str u;
	if (lg_cfg_number(v, &d, &u)) return -1;
	if (u.n == 0 || lg_str_eq(u, "s"))
		mul = 1000;
	else if (lg_str_eq(u, "ms"))
		mul = 1;
	else if (lg_str_eq(u, "m"))
		mul = 60000;
	else if (lg_str_eq(u, "h"))
		mul = 3600000;
	else if (lg_str_eq(u, "d"))
		mul = 86400000;
	else
		return -1;
	if (d * mul > 9e15) return -1;
	*out = (int64_t)(d * mul);
	return 0;
}

static LG_COLD int lg_cfg_duration(struct lg_cfgp *p, lg_str v, int64_t *out)
{
	if (lg_cfg_duration_of(v, out))
		return lg_cfg_err(p, "expected a duration like 500ms, 10s or 2m, got '%.*s'", (int)v.n, v.p);
	return 0;
}

static LG_COLD int lg_cfg_enum(struct lg_cfgp *p, lg_str v, const char (*names)[LG_ENUM_LEN], int n, int *out,
                       const char *what)
{
	int i;
	for (i = 0; i < n; i++)
		if (lg_str_eq(v, names[i])) {
			*out = i;
			return 0;
		}
	return lg_cfg_err(p, "unknown %s '%.*s'", what, (int)v.n, v.p);
}

/* A secret: literal, env:NAME or file:/path (first line). The value is
 * never echoed into an error message. */
static LG_COLD int lg_cfg_secret(struct lg_cfgp *p, lg_str v, const char **out)
{
	if (v.n > 4 && memcmp(v.p, "env:", 4) == 0) {
		char name[256];
		const char *val;
		if (v.n - 4 >= sizeof name) return lg_cfg_err(p, "environment variable name too long");
		memcpy(name, v.p + 4, v.n - 4);
		name[v.n - 4] = 0;
		val = getenv(name);
		if (!val || !*val) return lg_cfg_err(p, "environment variable %s is not set", name);
		*out = lg_cfg_str(p->c, lg_strz(val));
	} else if (v.n > 5 && memcmp(v.p, "file:", 5) == 0) {
		char path[1024], *buf;
		size_t len = 0, i = 0;
		int e = 0;
		if (v.n - 5 >= sizeof path) return lg_cfg_err(p, "file path too long");
		memcpy(path, v.p + 5, v.n - 5);
		path[v.n - 5] = 0;
		buf = lg_read_file(path, 65536, &len, &e);
		if (!buf) return lg_cfg_err(p, "cannot read secret file %s: %s", path, strerror(e));
		while (i < len && buf[i] != '\n' && buf[i] != '\r') i++;
		*out = lg_cfg_str(p->c, lg_str_trim(lg_str_of(buf, i)));
		free(buf);
		if (!**out) return lg_cfg_err(p, "secret file %s is empty", path);
	} else {
		*out = lg_cfg_str(p->c, v);
	}
	if (!*out) return lg_cfg_err(p, "out of memory");
	{ /* from env: or file: too: a CR or LF would end the header it goes into */
		const char *q;
		for (q = *out; *q; q++)
			if ((unsigned char)*q < 0x20 || *q == 0x7f)
				return lg_cfg_err(p, "the secret %.*s holds a control character (0x%02x)", (int)LG_MIN(v.n, 64), v.p,
				                  (unsigned)(unsigned char)*q);
	}
	return 0;
}

/* Splits "scheme://host[:port][/path]" for a provider. */
static LG_COLD int lg_cfg_url(struct lg_cfgp *p, struct lg_provider *pv, lg_str v)
{
	size_t i, hs, he, ps;
	long port;
	lg_str host;
	if (v.n > 7 && memcmp(v.p, "http://", 7) == 0)
		pv->tls = 0, hs = 7, port = 80;
	else if (v.n > 8 && memcmp(v.p, "https://", 8) == 0)
		pv->tls = 1, hs = 8, port = 443;
	else
		return lg_cfg_err(p, "base_url must start with http:// or https://");
	i = hs;
	if (i < v.n && v.p[i] == '[') { /* [v6]:port */
		while (i < v.n && v.p[i] != ']') i++;
		if (i == v.n) return lg_cfg_err(p, "base_url: missing ']' after IPv6 address");
		host = lg_str_of(v.p + hs + 1, i - hs - 1);
		he = ++i;
		if (he < v.n && v.p[he] != ':' && v.p[he] != '/')
			return lg_cfg_err(p, "base_url: unexpected '%c' after the IPv6 address", v.p[he]);
	} else {
		while (i < v.n && v.p[i] != ':' && v.p[i] != '/') i++;
		host = lg_str_of(v.p + hs, i - hs);
		he = i;
	}
	if (host.n == 0 || host.n > 253) return lg_cfg_err(p, "base_url: bad host name");
	if (he < v.n && v.p[he] == ':') {
		ps = ++he;
		port = 0;
		while (he < v.n && v.p[he] >= '0' && v.p[he] <= '9' && port < 65536)
			port = port * 10 + (v.p[he++] - '0');
		if (he == ps || port < 1 || port > 65535 || (he < v.n && v.p[he] != '/'))
			return lg_cfg_err(p, "base_url: bad port");
	}
	for (i = 0; i < v.n; i++)
		if ((unsigned char)v.p[i] <= ' ' || v.p[i] == '?' || v.p[i] == '#')
			return lg_cfg_err(p, "base_url: unexpected character '%c'", v.p[i]);
	pv->host = lg_cfg_str(p->c, host);
	pv->port = (int)port;
	/* base path without its trailing '/'; "" when none */
	{
		lg_str path = lg_str_of(v.p + he, v.n - he);
		while (path.n && path.p[path.n - 1] == '/') path.n--;
		pv->base_path = lg_cfg_str(p->c, path);
	}
	pv->base_url = lg_cfg_str(p->c, v);
	snprintf(pv->origin, sizeof pv->origin, "%s:%d%s", pv->host, pv->port, pv->tls ? "+tls" : "");
	snprintf(pv->hosthdr, sizeof pv->hosthdr, "%s%s%s", strchr(pv->host, ':') ? "[" : "", pv->host,
	         strchr(pv->host, ':') ? "]" : "");
	if (pv->port != (pv->tls ? 443 : 80))
		snprintf(pv->hosthdr + strlen(pv->hosthdr), sizeof pv->hosthdr - strlen(pv->hosthdr), ":%d", pv->port);
	return 0;
}

/* "PROVIDER MODEL [in=USD] [out=USD] [cache_read=USD] [cache_write=USD]
 *  [weight=N] [context=TOKENS] [max_output=TOKENS] [quant=NAME]
 *  [image_tokens=N] [audio_tokens=N] [file_tokens=N]" */
static LG_COLD int lg_cfg_target(struct lg_cfgp *p, struct lg_model *m, lg_str v)
{
	struct lg_target *t = (struct lg_target *)lg_cfg_push(p->c, &m->t, &m->nt, sizeof *t);
	size_t i = 0;
	int field = 0;
	if (!t) return lg_cfg_err(p, "out of memory");
	t->line = p->line;
	t->weight = 1;
	t->cache_read = t->cache_write = -1; /* unset: priced like input */
	t->image_tokens = t->audio_tokens = t->file_tokens = -1;
	while (i < v.n) {
		size_t st;
		lg_str w, k, val;
		double d;
		lg_str unit;
		while (i < v.n && (v.p[i] == ' ' || v.p[i] == '\t')) i++;
		st = i;
		while (i < v.n && v.p[i] != ' ' && v.p[i] != '\t') i++;
		w = lg_str_of(v.p + st, i - st);
		if (!w.n) break;
		if (field == 0) {
			t->prov_name = lg_cfg_str(p->c, w);
			field++;
			continue;
		}
		if (field == 1) {
			t->upstream = lg_cfg_str(p->c, w);
			field++;
			continue;
		}
		for (st = 0; st < w.n && w.p[st] != '='; st++) {
		}
		if (st == w.n) return lg_cfg_err(p, "target option '%.*s' is not name=value", (int)w.n, w.p);
		k = lg_str_of(w.p, st);
		val = lg_str_of(w.p + st + 1, w.n - st - 1);
		if (lg_str_eq(k, "quant")) {
			t->quant = lg_cfg_str(p->c, val);
			continue;
		}
		if (lg_cfg_number(val, &d, &unit) || unit.n || d < 0 || d > 1e12)
			return lg_cfg_err(p, "target option %.*s: expected a number from 0 to 1e12, got '%.*s'",
			                  (int)k.n, k.p, (int)val.n, val.p);
		if (lg_str_eq(k, "in"))
			t->in = d, t->price_set |= 1;
		else if (lg_str_eq(k, "out"))
			t->out = d, t->price_set |= 2;
		else if (lg_str_eq(k, "cache_read"))
			t->cache_read = d, t->price_set |= 4;
		else if (lg_str_eq(k, "cache_write"))
			t->cache_write = d, t->price_set |= 8;
		else if (lg_str_eq(k, "weight"))
			t->weight = d;
		else if (lg_str_eq(k, "context"))
			t->context = (int64_t)d;
		else if (lg_str_eq(k, "max_output"))
			t->max_output = (int64_t)d;
		else if (lg_str_eq(k, "image_tokens"))
			t->image_tokens = (int64_t)d;
		else if (lg_str_eq(k, "audio_tokens"))
			t->audio_tokens = (int64_t)d;
		else if (lg_str_eq(k, "file_tokens"))
			t->file_tokens = (int64_t)d;
		else
			return lg_cfg_err(p, "unknown target option '%.*s' (in, out, cache_read, cache_write, "
			                     "weight, context, max_output, quant, image_tokens, audio_tokens, file_tokens)",
			                  (int)k.n, k.p);
	}
	if (field < 2) return lg_cfg_err(p, "target needs a provider name and an upstream model");
	if (t->cache_read < 0) t->cache_read = t->in;
	if (t->cache_write < 0) t->cache_write = t->in;
	return 0;
}

/* The keys that need their own parser (LG_KT_FN rows below). */
static LG_COLD int lg_cfg_k_listen(struct lg_cfgp *p, void *obj, lg_str v)
{
	struct lg_cfg *c = (struct lg_cfg *)obj;
	int nl = c->nlisten, *ln;
	const char **slot = (const char **)lg_cfg_push(c, &c->listen, &c->nlisten, sizeof *slot);
	if (!slot || !(*slot = lg_cfg_str(c, v))) return lg_cfg_err(p, "out of memory");
	if (!(ln = (int *)lg_cfg_push(c, &c->listen_lines, &nl, sizeof *ln))) return lg_cfg_err(p, "out of memory");
	*ln = p->line;
	return 0;
}

static LG_COLD int lg_cfg_k_type(struct lg_cfgp *p, void *obj, lg_str v)
{
	struct lg_provider *pv = (struct lg_provider *)obj;
	if ((pv->row = lg_prov_row_find(v))) return 0;
	return lg_cfg_err(p, "unknown provider type (%s) '%.*s'", lg_prov_row_names(), (int)v.n, v.p);
}

static LG_COLD int lg_cfg_k_base_url(struct lg_cfgp *p, void *obj, lg_str v)
{
	return lg_cfg_url(p, (struct lg_provider *)obj, v);
}

static LG_COLD int lg_cfg_k_header(struct lg_cfgp *p, void *obj, lg_str v)
{
	struct lg_provider *pv = (struct lg_provider *)obj;
	size_t i;
	const char **slot;
	for (i = 0; i < v.n && v.p[i] != ':'; i++)
		if (!(isalnum((unsigned char)v.p[i]) || strchr("!#$%&'*+-.^_`|~", v.p[i]))) break;
	if (i == 0 || i == v.n || v.p[i] != ':') return lg_cfg_err(p, "header must be 'Name: value'");
	for (i = 0; i < v.n; i++)
		if (v.p[i] == '\r' || v.p[i] == '\n' || v.p[i] == 0) return lg_cfg_err(p, "header contains a line break");
	slot = (const char **)lg_cfg_push(p->c, &pv->headers, &pv->nheaders, sizeof *slot);
	if (!slot || !(*slot = lg_cfg_str(p->c, v))) return lg_cfg_err(p, "out of memory");
	return 0;
}

static LG_COLD int lg_cfg_k_target(struct lg_cfgp *p, void *obj, lg_str v)
{
	return lg_cfg_target(p, (struct lg_model *)obj, v);
}

static LG_COLD int lg_cfg_k_secret(struct lg_cfgp *p, void *obj, lg_str v)
{
	struct lg_key *ky = (struct lg_key *)obj;
	const char *sec;
	if (v.n > 7 && memcmp(v.p, "sha256:", 7) == 0) {
		size_t i;
		if (v.n != 7 + 64) return lg_cfg_err(p, "sha256: secret needs 64 hex digits");
		for (i = 0; i < 32; i++) {
			int hi = lg_hexval(v.p[7 + 2 * i]), lo = lg_hexval(v.p[8 + 2 * i]);
			if (hi < 0 || lo < 0) return lg_cfg_err(p, "sha256: secret is not hex");
			ky->hash[i] = (unsigned char)(hi << 4 | lo);
		}
		return 0;
	}
	if (lg_cfg_secret(p, v, &sec)) return -1;
	lg_sha256(sec, strlen(sec), ky->hash);
	return 0;
}

static LG_COLD int lg_cfg_k_budget(struct lg_cfgp *p, void *obj, lg_str v)
{
	struct lg_key *ky = (struct lg_key *)obj;
	double d;
	lg_str u;
	if (lg_cfg_number(v, &d, &u) || u.n < 2 || u.p[0] != '/')
		return lg_cfg_err(p, "budget must be USD/period, like 50/month");
	if (d <= 0) return lg_cfg_err(p, "budget must be more than 0 USD (remove the line for no budget)");
	ky->budget = d;
	return lg_cfg_enum(p, lg_str_of(u.p + 1, u.n - 1), lg_period_names, 4, &ky->period,
	                   "budget period (day, week, month, total)");
}

/* --- the keys: one row each ------------------------------------------------
 * Parsing, defaults, `llmgw --keys` and README's table of keys (make test
 * checks they agree) read this table, and nothing else lists the keys. A
 * row: its section, name, type, the field it sets (and, for a list, its
 * count; for others an int that gets the line number), the range of a
 * number with the message when it is out of it, an enum's values and what
 * they are called, a special parser, the default as it would be written in
 * the file, and one line of documentation. */
enum { LG_KS_GATEWAY = 1, LG_KS_PROVIDER, LG_KS_MODEL, LG_KS_KEY, LG_KS_STORE };
enum { LG_STORE_NONE, LG_STORE_TCP, LG_STORE_UNIX };
enum { LG_KT_STR, LG_KT_SECRET, LG_KT_BOOL, LG_KT_INT, LG_KT_LONG, LG_KT_SIZE, LG_KT_DURATION, LG_KT_ENUM,
       LG_KT_LIST, LG_KT_FN };
static const char lg_metrics_names[][LG_ENUM_LEN] = {"admin", "public", "off", ""};
static const char lg_auth_names[][LG_ENUM_LEN] = {"keys", "none", ""};
static const char lg_data_names[][LG_ENUM_LEN] = {"allow", "deny", ""};
static const char lg_onerr_names[][LG_ENUM_LEN] = {"closed", "local", ""};

struct lg_cfg_key {
	unsigned char sec, type, repeat; /* LG_KS_, LG_KT_, may be given more than once */
	unsigned char x;                 /* ENUM: its lg_cfg_enums row; FN: its lg_cfg_kfns row; a number: its
	                                    lg_cfg_ranges row (0: any) */
	unsigned char has_dflt;
	unsigned short off, aux;         /* the field; LIST: its count, else an int for the line (0: none) */
	const char *name;                /* "name\0default\0doc" (the default as written in the file):
	                                    one string, one relocation (lg_cfg_kdflt, lg_main_kdoc) */
};

static const char *lg_cfg_kdflt(const struct lg_cfg_key *k) { return k->name + strlen(k->name) + 1; }

/* The enums' values (NULL-terminated, the first is 0) and what they are called. */
static const struct {
	const char (*names)[LG_ENUM_LEN];
	const char *what;
} lg_cfg_enums[] = {
    {NULL, NULL},
    {lg_metrics_names, "metrics mode (admin, public, off)"},
    {lg_auth_names, "auth mode (keys, none)"},
    {lg_log_names, "log_level (error, warn, info, debug)"},
    {lg_strat_names, "strategy (order, price, latency, throughput, weighted)"},
    {lg_data_names, "data_collection (allow, deny)"},
    {lg_onerr_names, "on_error (closed, local)"},
};
/* FN rows: x picks the parser (a switch, not a table of pointers) */
enum { LG_KF_LISTEN = 1, LG_KF_TYPE, LG_KF_BASE_URL, LG_KF_HEADER, LG_KF_TARGET, LG_KF_SECRET, LG_KF_BUDGET };
/* The numbers with a range, and the message when a value is out of it (%ld: max). */
static const struct {
	long min, max;
	char what[40];
} lg_cfg_ranges[] = {
    {1, 0, ""},
    {0, LG_MAX_WORKERS, "workers must be 0 (one per core) to 64"},
    {1, LONG_MAX, "max_connections must be at least 1"},
    {1, LLMGW_MAX_ATTEMPTS, "max_attempts must be between 1 and %ld"},
    {256, LONG_MAX, "max_header must be at least 256 bytes"},
};

#define LG_KG(f) offsetof(struct lg_cfg, f)
#define LG_KP(f) offsetof(struct lg_provider, f)
#define LG_KM(f) offsetof(struct lg_model, f)
#define LG_KK(f) offsetof(struct lg_key, f)
static const struct lg_cfg_key lg_cfg_keys[] = {
    {1, LG_KT_FN, 1, 1, 1, 0, 0, "listen" "\0" "127.0.0.1:8080" "\0" "ADDR, ADDR tls or ADDR plain ([::]:8080 for IPv6, :8080 every IPv4 address)"},
    {1, LG_KT_INT, 0, 1, 1, LG_KG(workers), 0, "workers" "\0" "1" "\0" "event loops sharing the listeners (SO_REUSEPORT); 0 = one per core"},
    {1, LG_KT_LONG, 0, 2, 1, LG_KG(max_connections), 0, "max_connections" "\0" "1024" "\0" "client connections at once; more are refused"},
    {1, LG_KT_INT, 0, 3, 1, LG_KG(max_attempts), 0, "max_attempts" "\0" "3" "\0" "upstream attempts per request, fallbacks included"},
    {1, LG_KT_SIZE, 0, 0, 1, LG_KG(max_body), 0, "max_body" "\0" "16m" "\0" "request body limit (413 above)"},
    {1, LG_KT_SIZE, 0, 4, 1, LG_KG(max_header), 0, "max_header" "\0" "32k" "\0" "request head limit (431 above)"},
    {1, LG_KT_DURATION, 0, 0, 1, LG_KG(header_timeout), 0, "header_timeout" "\0" "10s" "\0" "a client must send its head within this"},
    {1, LG_KT_DURATION, 0, 0, 1, LG_KG(idle_timeout), 0, "idle_timeout" "\0" "60s" "\0" "keep-alive connections idle longer are closed"},
    {1, LG_KT_DURATION, 0, 0, 1, LG_KG(connect_timeout), 0, "connect_timeout" "\0" "5s" "\0" "upstream TCP and TLS connect"},
    {1, LG_KT_DURATION, 0, 0, 1, LG_KG(first_byte_timeout), 0, "first_byte_timeout" "\0" "120s" "\0" "upstream time to its first response byte"},
    {1, LG_KT_DURATION, 0, 0, 1, LG_KG(stream_idle_timeout), 0, "stream_idle_timeout" "\0" "120s" "\0" "longest silence inside an upstream stream"},
    {1, LG_KT_DURATION, 0, 0, 1, LG_KG(shutdown_timeout), 0, "shutdown_timeout" "\0" "30s" "\0" "SIGTERM: how long requests in flight may finish"},
    {1, LG_KT_DURATION, 0, 0, 1, LG_KG(send_timeout), 0, "send_timeout" "\0" "60s" "\0" "a client that reads nothing of its answer this long is dropped"},
    {1, LG_KT_DURATION, 0, 0, 1, LG_KG(body_timeout), 0, "body_timeout" "\0" "60s" "\0" "a client must send its whole body within this"},
    {1, LG_KT_STR, 0, 0, 0, LG_KG(ca_file), 0, "ca_file" "\0" "" "\0" "trust anchors for HTTPS upstreams (default: the usual system paths)"},
    {1, LG_KT_STR, 0, 0, 0, LG_KG(tls_cert), LG_KG(tls_line), "tls_cert" "\0" "" "\0" "PEM certificate chain: serve HTTPS on the listeners"},
    {1, LG_KT_STR, 0, 0, 0, LG_KG(tls_key), LG_KG(tls_line), "tls_key" "\0" "" "\0" "its PEM private key"},
    {1, LG_KT_STR, 0, 0, 0, LG_KG(proxy), LG_KG(proxy_line), "proxy" "\0" "" "\0" "upstream HTTP CONNECT proxy, http://[user:pass@]host:port (also HTTPS_PROXY)"},
    {1, LG_KT_SECRET, 0, 0, 0, LG_KG(admin_key), 0, "admin_key" "\0" "" "\0" "protects /admin/* (and /metrics unless metrics = public); literal, env:NAME or file:/path"},
    {1, LG_KT_ENUM, 0, 1, 1, LG_KG(metrics), 0, "metrics" "\0" "admin" "\0" "who may read /metrics"},
    {1, LG_KT_ENUM, 0, 2, 1, LG_KG(auth_none), LG_KG(auth_line), "auth" "\0" "keys" "\0" "none is refused on a listener that is not loopback"},
    {1, LG_KT_BOOL, 0, 0, 1, LG_KG(zdr), 0, "zdr" "\0" "no" "\0" "every request goes to zdr providers only"},
    {1, LG_KT_STR, 0, 0, 1, LG_KG(access_log), LG_KG(log_line), "access_log" "\0" "" "\0" "one JSON line per request; - = stderr; empty = off"},
    {1, LG_KT_ENUM, 0, 3, 1, LG_KG(log_level), 0, "log_level" "\0" "info" "\0" "diagnostics to stderr"},
    {1, LG_KT_STR, 0, 0, 0, LG_KG(state_dir), LG_KG(state_line), "state_dir" "\0" "" "\0" "the ledger: spend survives restarts and crashes; empty = memory only"},
    {1, LG_KT_STR, 0, 0, 0, LG_KG(prices), LG_KG(prices_line), "prices" "\0" "" "\0" "a genai-prices catalog (JSON, vendor/genai-prices.sh): prices of targets without in= out="},
    {2, LG_KT_FN, 0, 2, 0, 0, 0, "type" "\0" "" "\0" "openai, anthropic, gemini, azure, bedrock or mock"},
    {2, LG_KT_FN, 0, 3, 0, 0, 0, "base_url" "\0" "" "\0" "http:// or https:// (default: the type's public API; required for azure)"},
    {2, LG_KT_SECRET, 0, 0, 0, LG_KP(api_key), 0, "api_key" "\0" "" "\0" "literal, env:NAME or file:/path"},
    {2, LG_KT_FN, 1, 4, 0, 0, 0, "header" "\0" "" "\0" "Name: value, sent upstream"},
    {2, LG_KT_STR, 0, 0, 0, LG_KP(api_version), 0, "api_version" "\0" "" "\0" "azure: api-version of a deployment path (default 2024-10-21)"},
    {2, LG_KT_STR, 0, 0, 0, LG_KP(aws_region), 0, "aws_region" "\0" "" "\0" "bedrock: the AWS region"},
    {2, LG_KT_SECRET, 0, 0, 0, LG_KP(aws_access_key_id), 0, "aws_access_key_id" "\0" "" "\0" "bedrock: SigV4 access key (else api_key is a bearer token)"},
    {2, LG_KT_SECRET, 0, 0, 0, LG_KP(aws_secret_access_key), 0, "aws_secret_access_key" "\0" "" "\0" "bedrock: its secret"},
    {2, LG_KT_SECRET, 0, 0, 0, LG_KP(aws_session_token), 0, "aws_session_token" "\0" "" "\0" "bedrock: a temporary credential's token"},
    {2, LG_KT_BOOL, 0, 0, 1, LG_KP(zdr), 0, "zdr" "\0" "no" "\0" "the provider does not retain prompts"},
    {2, LG_KT_BOOL, 0, 0, 1, LG_KP(collects_data), 0, "collects_data" "\0" "yes" "\0" "the provider may store or train on data"},
    {2, LG_KT_BOOL, 0, 0, 1, LG_KP(direct), 0, "direct" "\0" "no" "\0" "requests for PROVIDER/<any upstream model> are allowed"},
    {2, LG_KT_BOOL, 0, 0, 1, LG_KP(responses), 0, "responses" "\0" "no" "\0" "openai, azure: it serves the Responses API, so /v1/responses is forwarded as it is"},
    {2, LG_KT_STR, 0, 0, 0, LG_KP(region), 0, "region" "\0" "" "\0" "free-form label for key and request region filters"},
    {2, LG_KT_INT, 0, 0, 1, LG_KP(max_concurrency), 0, "max_concurrency" "\0" "0" "\0" "requests in flight to this provider; 0 = unlimited"},
    {3, LG_KT_FN, 1, 5, 0, 0, 0, "target" "\0" "" "\0" "PROVIDER UPSTREAM [in= out= cache_read= cache_write= weight= context= max_output= quant= image_tokens= " "audio_tokens= file_tokens=], in preference order"},
    {3, LG_KT_ENUM, 0, 4, 1, LG_KM(strategy), 0, "strategy" "\0" "order" "\0" "how the targets are ordered"},
    {3, LG_KT_LIST, 0, 0, 0, LG_KM(fallbacks), LG_KM(nfallbacks), "fallbacks" "\0" "" "\0" "other models to try when every target failed"},
    {3, LG_KT_LIST, 0, 0, 0, LG_KM(aliases), LG_KM(naliases), "aliases" "\0" "" "\0" "other names clients may ask for"},
    {3, LG_KT_DURATION, 0, 0, 1, LG_KM(affinity_ms), 0, "affinity" "\0" "0" "\0" "prompt-cache stickiness: the same prompt prefix goes to the same target; 0 = off"},
    {4, LG_KT_FN, 0, 6, 0, 0, 0, "secret" "\0" "" "\0" "literal, env:NAME, file:/path or sha256:HEX (only the hash is kept)"},
    {4, LG_KT_LIST, 0, 0, 1, LG_KK(models), LG_KK(nmodels), "models" "\0" "*" "\0" "glob allow-list of models"},
    {4, LG_KT_LIST, 0, 0, 0, LG_KK(regions), LG_KK(nregions), "regions" "\0" "" "\0" "only providers with these region labels"},
    {4, LG_KT_FN, 0, 7, 0, 0, 0, "budget" "\0" "" "\0" "USD per day, week, month or total, like 50/month"},
    {4, LG_KT_LONG, 0, 0, 1, LG_KK(rpm), 0, "rpm" "\0" "0" "\0" "requests per minute; 0 = unlimited"},
    {4, LG_KT_LONG, 0, 0, 1, LG_KK(tpm), 0, "tpm" "\0" "0" "\0" "tokens per minute; 0 = unlimited"},
    {4, LG_KT_INT, 0, 0, 1, LG_KK(max_concurrency), 0, "max_concurrency" "\0" "0" "\0" "requests in flight; 0 = unlimited"},
    {4, LG_KT_BOOL, 0, 0, 1, LG_KK(zdr), 0, "zdr" "\0" "no" "\0" "this key's requests go to zdr providers only"},
    {4, LG_KT_ENUM, 0, 5, 1, LG_KK(data_deny), 0, "data_collection" "\0" "allow" "\0" "deny: never to providers that collect data"},
    {5, LG_KT_SECRET, 0, 0, 0, LG_KG(store_url), LG_KG(store_line), "url" "\0" "" "\0" "redis://[user:password@]host:port[/db], rediss:// (TLS, verified with ca_file) or unix:/path (Redis 6/7, Valkey); literal, env:NAME or file:/path"},
    {5, LG_KT_STR, 0, 0, 1, LG_KG(store_prefix), 0, "prefix" "\0" "llmgw:" "\0" "the start of every key llmgw writes in the store"},
    {5, LG_KT_DURATION, 0, 0, 1, LG_KG(store_records), 0, "records" "\0" "1h" "\0" "how long the store keeps each request's record (GET /v1/generation from any instance)"},
    {5, LG_KT_DURATION, 0, 0, 1, LG_KG(store_lease), 0, "lease" "\0" "15s" "\0" "a max_concurrency slot not renewed this long (its instance died) is free again"},
    {5, LG_KT_DURATION, 0, 0, 1, LG_KG(store_timeout), 0, "timeout" "\0" "1s" "\0" "a store call unanswered this long fails, and the connection is made again"},
    {5, LG_KT_ENUM, 0, 6, 1, LG_KG(store_on_error), 0, "on_error" "\0" "closed" "\0" "the store failing: closed = 503 for keys with budgets; local = this instance spends its share of what was left, reconciled later"},
    {5, LG_KT_STR, 0, 0, 0, LG_KG(store_instance), 0, "instance" "\0" "" "\0" "this gateway's name in the store (default: host name:port of the first listener)"},
};

static LG_COLD const struct lg_cfg_key *lg_cfg_key_find(int sec, lg_str k)
{
	size_t i;
	for (i = 0; i < LG_COUNTOF(lg_cfg_keys); i++)
		if (lg_cfg_keys[i].sec == sec && lg_str_eq(k, lg_cfg_keys[i].name)) return &lg_cfg_keys[i];
	return NULL;
}

/* Sets the field of key row k in obj from v. */
static LG_COLD int lg_cfg_set(struct lg_cfgp *p, const struct lg_cfg_key *k, void *obj, lg_str v)
{
	char *f = (char *)obj + k->off;
	long l = 0;
	int n;
	if (k->aux && k->type != LG_KT_LIST) *(int *)((char *)obj + k->aux) = p->line;
	switch (k->type) {
	case LG_KT_STR: return (*(const char **)f = lg_cfg_str(p->c, v)) ? 0 : -1;
	case LG_KT_SECRET: return lg_cfg_secret(p, v, (const char **)f);
	case LG_KT_BOOL: return lg_cfg_bool(p, v, (int *)f);
	case LG_KT_INT:
	case LG_KT_LONG:
		if (lg_cfg_long(p, v, &l)) return -1;
		if (k->x && (l < lg_cfg_ranges[k->x].min || l > lg_cfg_ranges[k->x].max))
			return lg_cfg_err(p, lg_cfg_ranges[k->x].what, lg_cfg_ranges[k->x].max);
		if (k->type == LG_KT_INT)
			*(int *)f = (int)l;
		else
			*(long *)f = l;
		return 0;
	case LG_KT_SIZE:
		if (lg_cfg_size(p, v, (size_t *)f)) return -1;
		if (k->x && (*(size_t *)f < (size_t)lg_cfg_ranges[k->x].min || *(size_t *)f > (size_t)lg_cfg_ranges[k->x].max))
			return lg_cfg_err(p, lg_cfg_ranges[k->x].what, lg_cfg_ranges[k->x].max);
		return 0;
	case LG_KT_DURATION: return lg_cfg_duration(p, v, (int64_t *)f);
	case LG_KT_ENUM:
		for (n = 0; lg_cfg_enums[k->x].names[n][0]; n++) {
		}
		return lg_cfg_enum(p, v, lg_cfg_enums[k->x].names, n, (int *)f, lg_cfg_enums[k->x].what);
	case LG_KT_LIST: return lg_cfg_list(p, v, (const char ***)f, (int *)((char *)obj + k->aux));
	default: break;
	}
	switch (k->x) {
	case LG_KF_LISTEN: return lg_cfg_k_listen(p, obj, v);
	case LG_KF_TYPE: return lg_cfg_k_type(p, obj, v);
	case LG_KF_BASE_URL: return lg_cfg_k_base_url(p, obj, v);
	case LG_KF_HEADER: return lg_cfg_k_header(p, obj, v);
	case LG_KF_TARGET: return lg_cfg_k_target(p, obj, v);
	case LG_KF_SECRET: return lg_cfg_k_secret(p, obj, v);
	default: return lg_cfg_k_budget(p, obj, v);
	}
}

/* The defaults of a section's keys, into a new obj (the special keys'
 * defaults are documentation: validation fills them). */
static LG_COLD void lg_cfg_defaults(struct lg_cfgp *p, int sec, void *obj)
{
	size_t i;
	int line = p->line;
	for (i = 0; i < LG_COUNTOF(lg_cfg_keys); i++) {
		const struct lg_cfg_key *k = &lg_cfg_keys[i];
		if (k->sec == sec && k->has_dflt && k->type != LG_KT_FN && k->type != LG_KT_LIST) {
			p->line = 0;
			lg_cfg_set(p, k, obj, lg_strz(lg_cfg_kdflt(k)));
		}
	}
	p->line = line;
}

/* One key of a section: its row, or "unknown key". */
static LG_COLD int lg_cfg_key(struct lg_cfgp *p, int sec, void *obj, const char *owner, lg_str k, lg_str v)
{
	const struct lg_cfg_key *row = lg_cfg_key_find(sec, k);
	if (row) return lg_cfg_set(p, row, obj, v);
	if (sec == LG_KS_GATEWAY || sec == LG_KS_STORE)
		return lg_cfg_err(p, "unknown key '%.*s' in [%s]", (int)k.n, k.p, sec == LG_KS_STORE ? "store" : "gateway");
	return lg_cfg_err(p, "unknown key '%.*s' in [%s.%s]", (int)k.n, k.p,
	                  sec == LG_KS_PROVIDER ? "provider" : sec == LG_KS_MODEL ? "model" : "key", owner);
}

static struct lg_provider *lg_cfg_find_provider(const struct lg_cfg *c, const char *name, size_t n)
{
	int i;
	for (i = 0; i < c->nprov; i++)
		if (strlen(c->prov[i]->name) == n && memcmp(c->prov[i]->name, name, n) == 0)
			return c->prov[i];
	return NULL;
}

/* A model by public name or alias. */
static struct lg_model *lg_cfg_find_model(const struct lg_cfg *c, lg_str name)
{
	int i, k;
	for (i = 0; i < c->nmodels; i++) {
		struct lg_model *m = c->models[i];
		if (lg_str_eq(name, m->name)) return m;
		for (k = 0; k < m->naliases; k++)
			if (lg_str_eq(name, m->aliases[k])) return m;
	}
	return NULL;
}

static LG_COLD int lg_cfg_is_loopback(const char *addr)
{
	return strncmp(addr, "127.", 4) == 0 || strncmp(addr, "[::1]", 5) == 0 ||
	       strncmp(addr, "localhost:", 10) == 0;
}

/* One listen value: "ADDR", "ADDR tls" or "ADDR plain", where ADDR is
 * "127.0.0.1:8080", "[::]:8080", ":8080" (every IPv4 address) or
 * "localhost:8080". Fills sa, sl and *tls (bare: HTTPS when tls_cert is
 * set); NULL, or what is wrong. Config checks and the listeners share it. */
static LG_COLD const char *lg_cfg_listen_addr(const char *spec, int has_cert, struct sockaddr_storage *sa, socklen_t *sl,
                                      int *tls)
{
	char host[128];
	const char *colon, *sp = strchr(spec, ' ');
	size_t an = sp ? (size_t)(sp - spec) : strlen(spec);
	long port = 0;
	size_t i;
	*tls = has_cert;
	if (sp) {
		lg_str mode = lg_str_trim(lg_strz(sp));
		if (lg_str_eq(mode, "tls") || lg_str_eq(mode, "https"))
			*tls = 1;
		else if (lg_str_eq(mode, "plain") || lg_str_eq(mode, "http"))
			*tls = 0;
		else
			return "expected ADDR, ADDR tls or ADDR plain";
	}
	for (colon = NULL, i = 0; i < an; i++)
		if (spec[i] == ':') colon = spec + i;
	if (!colon || (size_t)(colon - spec) >= sizeof host) return "expected HOST:PORT, [IPV6]:PORT or :PORT";
	if (colon + 1 == spec + an) return "no port after the ':'";
	for (i = (size_t)(colon + 1 - spec); i < an; i++) {
		if (spec[i] < '0' || spec[i] > '9') return "the port is not a number";
		if ((port = port * 10 + (spec[i] - '0')) > 65535) return "the port is out of range (0 to 65535)";
	}
	memcpy(host, spec, (size_t)(colon - spec));
	host[colon - spec] = 0;
	if (host[0] == '[') {
		size_t hl = strlen(host);
		if (hl < 2 || host[hl - 1] != ']') return "an IPv6 address needs its closing ']'";
		memmove(host, host + 1, hl - 2);
		host[hl - 2] = 0;
	}
	if (!host[0] || strcmp(host, "*") == 0) strcpy(host, "0.0.0.0");
	if (strcmp(host, "localhost") == 0) strcpy(host, "127.0.0.1");
	memset(sa, 0, sizeof *sa);
	if (inet_pton(AF_INET, host, &((struct sockaddr_in *)sa)->sin_addr) == 1) {
		((struct sockaddr_in *)sa)->sin_family = AF_INET;
		((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)port);
		*sl = sizeof(struct sockaddr_in);
	} else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)sa)->sin6_addr) == 1) {
		((struct sockaddr_in6 *)sa)->sin6_family = AF_INET6;
		((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)port);
		*sl = sizeof(struct sockaddr_in6);
	} else {
		return "the host is not an IP address (or localhost)";
	}
	return NULL;
}

/* Is the directory of path (or path itself, dir = 1) there and writable? */
static LG_COLD int lg_cfg_writable(const char *path, int dir)
{
	char d[1024];
	const char *sl = strrchr(path, '/');
	struct stat st;
	if (dir) return stat(path, &st) == 0 && S_ISDIR(st.st_mode) && access(path, W_OK | X_OK) == 0;
	if (stat(path, &st) == 0) return !S_ISDIR(st.st_mode) && access(path, W_OK) == 0;
	if (!sl) return access(".", W_OK | X_OK) == 0;
	if ((size_t)(sl - path) >= sizeof d) return 0;
	memcpy(d, path, (size_t)(sl - path));
	d[sl - path] = 0;
	return lg_cfg_writable(sl == path ? "/" : d, 1);
}

static LG_COLD void lg_cfg_free(struct lg_cfg *c)
{
	if (c) {
		struct lg_arena a = c->a;
		lg_arena_free(&a);
	}
}

static LG_COLD int lg_cfg_store_instance(struct lg_cfgp *p);

/* [store]: url = redis://[user:password@]host:port[/db] or unix:/path,
 * split into the fields the store's client connects with; the instance
 * name by default. The password never goes into a message. */
static LG_COLD int lg_cfg_store(struct lg_cfgp *p)
{
	struct lg_cfg *c = p->c;
	lg_str v, host, cred = lg_str_of("", 0);
	size_t i, at = 0, hs;
	long port = 6379, db = 0;
	char name[300];
	if (!c->store_sec) return 0;
	p->line = c->store_line ? c->store_line : c->store_sec;
	if (!c->store_url || !*c->store_url) return lg_cfg_err(p, "[store] needs url = redis://host:port or unix:/path");
	v = lg_strz(c->store_url);
	if (v.n > 5 && memcmp(v.p, "unix:", 5) == 0) {
		if (v.n - 5 >= sizeof(((struct sockaddr_un *)0)->sun_path) || v.p[5] != '/')
			return lg_cfg_err(p, "[store] url unix:PATH needs an absolute path shorter than %u bytes",
			                  (unsigned)sizeof(((struct sockaddr_un *)0)->sun_path));
		c->store_kind = LG_STORE_UNIX;
		c->store_path = c->store_url + 5;
		c->store_name = c->store_url;
		return lg_cfg_store_instance(p);
	}
	if (v.n > 9 && memcmp(v.p, "rediss://", 9) == 0) { /* TLS, verified like https upstreams */
#if !LLMGW_TLS
		return lg_cfg_err(p, "[store] url: rediss:// needs TLS, and this llmgw is built without it (TLS=0)");
#endif
		c->store_tls = 1;
		v.p += 9, v.n -= 9;
	} else if (v.n > 8 && memcmp(v.p, "redis://", 8) == 0) {
		v.p += 8, v.n -= 8;
	} else {
		return lg_cfg_err(p, "[store] url must be redis[s]://[user:password@]host:port[/db] or unix:/path");
	}
	for (i = 0; i < v.n && v.p[i] != '/'; i++)
		if (v.p[i] == '@') at = i + 1;
	if (at) cred = lg_str_of(v.p, at - 1), v.p += at, v.n -= at;
	for (hs = 0; hs < v.n && v.p[hs] != '/'; hs++) {
	}
	if (hs < v.n) { /* /db */
		lg_str d = lg_str_of(v.p + hs + 1, v.n - hs - 1);
		db = 0;
		if (!d.n || d.n > 5) return lg_cfg_err(p, "[store] url: the database after '/' must be a number");
		for (i = 0; i < d.n; i++) {
			if (d.p[i] < '0' || d.p[i] > '9') return lg_cfg_err(p, "[store] url: the database after '/' must be a number");
			db = db * 10 + (d.p[i] - '0');
		}
		v.n = hs;
	}
	host = v;
	if (host.n && host.p[0] == '[') { /* [v6]:port */
		for (i = 0; i < host.n && host.p[i] != ']'; i++) {
		}
		if (i == host.n) return lg_cfg_err(p, "[store] url: missing ']' after the IPv6 address");
		if (i + 1 < host.n) {
			if (host.p[i + 1] != ':') return lg_cfg_err(p, "[store] url: expected ':' after the IPv6 address");
			at = i + 2;
		} else {
			at = 0;
		}
		v = host;
		host = lg_str_of(v.p + 1, i - 1);
	} else {
		for (i = host.n; i > 0 && host.p[i - 1] != ':'; i--) {
		}
		at = i;
		v = host;
		if (i) host.n = i - 1;
	}
	if (at) {
		if (at == v.n) return lg_cfg_err(p, "[store] url: no port after the ':'");
		port = 0;
		for (i = at; i < v.n; i++) {
			if (v.p[i] < '0' || v.p[i] > '9' || (port = port * 10 + (v.p[i] - '0')) > 65535)
				return lg_cfg_err(p, "[store] url: bad port");
		}
		if (port < 1) return lg_cfg_err(p, "[store] url: bad port");
	}
	if (!host.n || host.n > 253) return lg_cfg_err(p, "[store] url: no host name");
	if (v.p[0] != '[' && memchr(host.p, ':', host.n)) return lg_cfg_err(p, "[store] url: bad port");
	c->store_kind = LG_STORE_TCP;
	c->store_host = lg_cfg_str(c, host);
	c->store_port = (int)port;
	c->store_db = (int)db;
	if (cred.n) { /* user:password, or a password alone (AUTH password: the default user) */
		for (i = 0; i < cred.n && cred.p[i] != ':'; i++) {
		}
		if (i < cred.n) {
			if (i) c->store_user = lg_cfg_str(c, lg_str_of(cred.p, i));
			c->store_pass = lg_cfg_str(c, lg_str_of(cred.p + i + 1, cred.n - i - 1));
		} else {
			c->store_pass = lg_cfg_str(c, cred);
		}
	}
	snprintf(name, sizeof name, "redis%s://%s%s%s:%d/%d", c->store_tls ? "s" : "", strchr(c->store_host, ':') ? "[" : "", c->store_host,
	         strchr(c->store_host, ':') ? "]" : "", c->store_port, c->store_db);
	c->store_name = lg_cfg_str(c, lg_strz(name));
	if (!c->store_host || !c->store_name) return lg_cfg_err(p, "out of memory");
	return lg_cfg_store_instance(p);
}

/* [store] instance: by default the host name and the port of the first
 * listener ("router1:8080"). */
static LG_COLD int lg_cfg_store_instance(struct lg_cfgp *p)
{
	struct lg_cfg *c = p->c;
	char name[300];
	if (!c->store_instance || !*c->store_instance) {
		char hn[256];
		const char *l = c->nlisten ? c->listen[0] : "127.0.0.1:8080", *colon = strrchr(l, ':'), *sp;
		size_t pn;
		if (gethostname(hn, sizeof hn) != 0) lg_cpy(hn, sizeof hn, "llmgw");
		hn[sizeof hn - 1] = 0;
		pn = colon ? strlen(colon + 1) : 0;
		if (colon && (sp = strchr(colon, ' '))) pn = (size_t)(sp - colon - 1);
		snprintf(name, sizeof name, "%s:%.*s", hn, (int)pn, colon ? colon + 1 : "");
		if (!(c->store_instance = lg_cfg_str(c, lg_strz(name)))) return lg_cfg_err(p, "out of memory");
	}
	return 0;
}

/* Cross-section checks once the whole file is read. */
/* --- 5b. the price catalog (prices = FILE) ------------------------------ */

/* The catalog is pydantic's genai-prices data (vendor/genai-prices.sh makes it): an array of
 * providers, each with match rules and models, each model with match rules and prices in USD
 * per million tokens, a price being a number or {base, tiers:[{start, price}]} (the whole
 * request at the price of the last tier whose start its input tokens pass). It is read at each
 * config load, the prices of the targets it names copied into them, and not kept. */

/* A small backtracking matcher for the catalog's JavaScript regexes (RegExp.test: found
 * anywhere): literals, ., [classes], \d \w \s (and negations), ^ $, groups (...) (?:...),
 * lookahead (?=...) (?!...), |, and * + ? {n} {n,} {n,m} (lazy forms match the same set). */
#define LG_RX_NODES 96
enum { LG_RX_SET, LG_RX_BOL, LG_RX_EOL, LG_RX_GROUP, LG_RX_LOOK, LG_RX_NLOOK };
struct lg_rx_node {
	unsigned char type, set[32];
	int next, alt0, nalt; /* sequence link; GROUP, LOOK: the first node of each alternative */
	int min, max;
};
struct lg_rx {
	struct lg_rx_node nd[LG_RX_NODES];
	int alts[LG_RX_NODES], nn, na;
	const char *s;
	size_t n;
};
struct lg_rx_k { /* what follows the end of an alternative of group g */
	int g, cnt;
	size_t at;
	const struct lg_rx_k *up;
};

static void lg_rx_class(unsigned char *set, char c, int neg)
{
	unsigned char one[32];
	int i;
	memset(one, 0, sizeof one);
	for (i = 0; i < 256; i++)
		if ((c == 'd' && isdigit(i)) || (c == 'w' && (isalnum(i) || i == '_')) || (c == 's' && isspace(i)))
			one[i >> 3] |= (unsigned char)(1u << (i & 7));
	for (i = 0; i < 32; i++) set[i] |= neg ? (unsigned char)~one[i] : one[i];
}

static void lg_rx_bit(unsigned char *set, int c) { set[c >> 3] |= (unsigned char)(1u << (c & 7)); }

static int lg_rx_alts(struct lg_rx *x, const char *p, size_t n, size_t *i, int g);

/* One sequence up to | or ) ; returns its first node (-1: empty), or -2 on a syntax error. */
static int lg_rx_seq(struct lg_rx *x, const char *p, size_t n, size_t *i)
{
	int first = -1, last = -1;
	while (*i < n && p[*i] != '|' && p[*i] != ')') {
		struct lg_rx_node *d;
		int k;
		char c = p[(*i)++];
		if (x->nn >= LG_RX_NODES) return -2;
		k = x->nn++;
		d = &x->nd[k];
		memset(d, 0, sizeof *d);
		d->next = -1;
		d->min = d->max = 1;
		if (c == '^' || c == '$') {
			d->type = c == '^' ? LG_RX_BOL : LG_RX_EOL;
		} else if (c == '(') {
			d->type = LG_RX_GROUP;
			if (*i + 1 < n && p[*i] == '?') {
				if (p[*i + 1] == '=') d->type = LG_RX_LOOK;
				else if (p[*i + 1] == '!') d->type = LG_RX_NLOOK;
				else if (p[*i + 1] != ':') return -2;
				*i += 2;
			}
			if (lg_rx_alts(x, p, n, i, k) || *i >= n || p[*i] != ')') return -2;
			(*i)++;
		} else if (c == '[') {
			int neg = *i < n && p[*i] == '^', prev = -1;
			d->type = LG_RX_SET;
			if (neg) (*i)++;
			while (*i < n && p[*i] != ']') {
				int ch = (unsigned char)p[(*i)++];
				if (ch == '\\' && *i < n) {
					char e = p[(*i)++];
					if (strchr("dwsDWS", e)) {
						lg_rx_class(d->set, (char)tolower((unsigned char)e), isupper((unsigned char)e));
						prev = -1;
						continue;
					}
					ch = (unsigned char)e;
				} else if (ch == '-' && prev >= 0 && *i < n && p[*i] != ']') {
					int hi = (unsigned char)p[(*i)++], c2;
					for (c2 = prev; c2 <= hi; c2++) lg_rx_bit(d->set, c2);
					prev = -1;
					continue;
				}
				lg_rx_bit(d->set, ch);
				prev = ch;
			}
			if (*i >= n) return -2;
			(*i)++;
			if (neg) {
				int b;
				for (b = 0; b < 32; b++) d->set[b] = (unsigned char)~d->set[b];
			}
		} else if (c == '.') {
			d->type = LG_RX_SET;
			memset(d->set, 0xff, sizeof d->set);
			d->set['\n' >> 3] &= (unsigned char)~(1u << ('\n' & 7));
		} else if (c == '*' || c == '+' || c == '?' || c == '{' || c == '|') {
			return -2;
		} else {
			d->type = LG_RX_SET;
			if (c == '\\') {
				if (*i >= n) return -2;
				c = p[(*i)++];
				if (strchr("dwsDWS", c)) {
					lg_rx_class(d->set, (char)tolower((unsigned char)c), isupper((unsigned char)c));
					c = 0;
				} else if (c == 'n') c = '\n';
				else if (c == 't') c = '\t';
			}
			if (c) lg_rx_bit(d->set, (unsigned char)c);
		}
		if (*i < n && (p[*i] == '*' || p[*i] == '+' || p[*i] == '?' || p[*i] == '{')) {
			char q = p[(*i)++];
			if (d->type == LG_RX_BOL || d->type == LG_RX_EOL || d->type >= LG_RX_LOOK) return -2;
			if (q == '*') d->min = 0, d->max = INT_MAX;
			else if (q == '+') d->max = INT_MAX;
			else if (q == '?') d->min = 0;
			else {
				long a = 0, b;
				if (*i >= n || !isdigit((unsigned char)p[*i])) return -2;
				while (*i < n && isdigit((unsigned char)p[*i]) && a < 10000) a = a * 10 + (p[(*i)++] - '0');
				b = a;
				if (*i < n && p[*i] == ',') {
					(*i)++;
					b = INT_MAX;
					if (*i < n && isdigit((unsigned char)p[*i]))
						for (b = 0; *i < n && isdigit((unsigned char)p[*i]) && b < 10000;)
							b = b * 10 + (p[(*i)++] - '0');
				}
				if (*i >= n || p[*i] != '}' || b < a) return -2;
				(*i)++;
				d->min = (int)a, d->max = (int)b;
			}
			if (*i < n && p[*i] == '?') (*i)++;
		}
		if (last >= 0) x->nd[last].next = k;
		else first = k;
		last = k;
	}
	return first;
}

/* The alternatives of group g, up to its ')' (not consumed). */
static int lg_rx_alts(struct lg_rx *x, const char *p, size_t n, size_t *i, int g)
{
	int a[LG_RX_NODES], na = 0, k;
	for (;;) {
		int f = lg_rx_seq(x, p, n, i);
		if (f == -2 || na >= LG_RX_NODES) return -1;
		a[na++] = f;
		if (*i < n && p[*i] == '|') {
			(*i)++;
			continue;
		}
		break;
	}
	if (x->na + na > LG_RX_NODES) return -1;
	x->nd[g].alt0 = x->na;
	x->nd[g].nalt = na;
	for (k = 0; k < na; k++) x->alts[x->na++] = a[k];
	return 0;
}

static int lg_rx_run(const struct lg_rx *x, int nd, size_t i, const struct lg_rx_k *k);

static int lg_rx_group(const struct lg_rx *x, int g, size_t i, int cnt, const struct lg_rx_k *up)
{
	struct lg_rx_k k;
	int a;
	k.g = g, k.cnt = cnt, k.at = i, k.up = up;
	for (a = 0; a < x->nd[g].nalt; a++)
		if (lg_rx_run(x, x->alts[x->nd[g].alt0 + a], i, &k)) return 1;
	return 0;
}

/* Does the pattern from node nd on, then what k says, match at i? */
static int lg_rx_run(const struct lg_rx *x, int nd, size_t i, const struct lg_rx_k *k)
{
	const struct lg_rx_node *d;
	if (nd < 0) { /* an alternative ended: the group repeats or what follows it goes on */
		const struct lg_rx_node *g;
		int c;
		if (!k) return 1;
		g = &x->nd[k->g];
		if (g->type == LG_RX_LOOK || g->type == LG_RX_NLOOK) return 1;
		c = k->cnt + 1;
		if (c < g->max && i != k->at && lg_rx_group(x, k->g, i, c, k->up)) return 1;
		return c >= g->min && lg_rx_run(x, g->next, i, k->up);
	}
	d = &x->nd[nd];
	switch (d->type) {
	case LG_RX_BOL: return i == 0 && lg_rx_run(x, d->next, i, k);
	case LG_RX_EOL: return i == x->n && lg_rx_run(x, d->next, i, k);
	case LG_RX_LOOK:
	case LG_RX_NLOOK:
		if (lg_rx_group(x, nd, i, 0, NULL) != (d->type == LG_RX_LOOK)) return 0;
		return lg_rx_run(x, d->next, i, k);
	case LG_RX_GROUP:
		if (lg_rx_group(x, nd, i, 0, k)) return 1;
		return d->min == 0 && lg_rx_run(x, d->next, i, k);
	default: {
		size_t m = 0;
		while ((int)m < d->max && i + m < x->n &&
		       (d->set[(unsigned char)x->s[i + m] >> 3] & (1u << ((unsigned char)x->s[i + m] & 7))))
			m++;
		for (;; m--) {
			if ((int)m < d->min) return 0;
			if (lg_rx_run(x, d->next, i + m, k)) return 1;
			if (!m) return 0;
		}
	}
	}
}

/* 1: the pattern matches somewhere in s; 0: not; -1: a pattern this matcher cannot read. */
static int lg_rx_test(const char *pat, size_t pn, const char *s, size_t n)
{
	struct lg_rx *x = (struct lg_rx *)calloc(1, sizeof *x);
	size_t i = 0, at;
	int r = 0;
	if (!x) return -1;
	x->nn = 1;
	x->nd[0].type = LG_RX_GROUP;
	x->nd[0].min = x->nd[0].max = 1;
	x->nd[0].next = -1;
	if (lg_rx_alts(x, pat, pn, &i, 0) || i != pn) {
		free(x);
		return -1;
	}
	x->s = s, x->n = n;
	for (at = 0; at <= n && !r; at++) r = lg_rx_group(x, 0, at, 0, NULL);
	free(x);
	return r;
}

struct lg_price_cat {
	struct lg_json j;
	const char *s;
	size_t n;
	char tmp[512]; /* an unescaped pattern */
};

/* The unescaped text of string token t, in c->tmp (valid until the next call). */
static lg_str lg_price_text(struct lg_price_cat *c, int t)
{
	lg_str r = lg_json_raw(&c->j, c->s, t);
	long k;
	if (r.n >= sizeof c->tmp || (k = lg_json_unescape(r.p, r.n, c->tmp)) < 0) return lg_str_of("", 0);
	return lg_str_of(c->tmp, (size_t)k);
}

/* A catalog match rule (equals, starts_with, ends_with, contains: case-blind; regex; and, or)
 * against name. */
static int lg_price_match(struct lg_price_cat *c, int m, const char *name)
{
	struct lg_jit it = lg_json_iter(&c->j, m);
	size_t nl = strlen(name);
	while (lg_json_next(&c->j, &it)) {
		lg_str key = lg_json_raw(&c->j, c->s, it.key), v;
		uint32_t e;
		int any = lg_str_eq(key, "or");
		if (any || lg_str_eq(key, "and")) {
			if (lg_json_type(&c->j, it.val) != LG_J_ARR) return 0;
			for (e = 0; e < c->j.t[it.val].size; e++) {
				int r = lg_price_match(c, lg_json_at(&c->j, it.val, e), name);
				if (r && any) return 1;
				if (!r && !any) return 0;
			}
			return !any;
		}
		if (lg_json_type(&c->j, it.val) != LG_J_STR) return 0;
		v = lg_price_text(c, it.val);
		if (lg_str_eq(key, "regex")) return lg_rx_test(v.p, v.n, name, nl) == 1;
		if (lg_str_eq(key, "equals")) return v.n == nl && strncasecmp(v.p, name, nl) == 0;
		if (lg_str_eq(key, "starts_with")) return v.n <= nl && strncasecmp(v.p, name, v.n) == 0;
		if (lg_str_eq(key, "ends_with")) return v.n <= nl && strncasecmp(v.p, name + nl - v.n, v.n) == 0;
		if (lg_str_eq(key, "contains")) {
			size_t a;
			for (a = 0; a + v.n <= nl; a++)
				if (strncasecmp(v.p, name + a, v.n) == 0) return 1;
			return 0;
		}
		return 0;
	}
	return 0;
}

/* The catalog's provider: by id, then by its provider_match rule. */
static int lg_price_provider(struct lg_price_cat *c, const char *id)
{
	uint32_t i;
	int pass;
	for (pass = 0; pass < 2; pass++)
		for (i = 0; i < c->j.t[0].size; i++) {
			int p = lg_json_at(&c->j, 0, i), t;
			if (pass == 0) {
				t = lg_json_get(&c->j, c->s, p, "id");
				if (lg_json_type(&c->j, t) == LG_J_STR) {
					lg_str v = lg_json_raw(&c->j, c->s, t);
					if (v.n == strlen(id) && strncasecmp(v.p, id, v.n) == 0) return p;
				}
			} else if ((t = lg_json_get(&c->j, c->s, p, "provider_match")) >= 0 && lg_price_match(c, t, id))
				return p;
		}
	return -1;
}

/* The catalog's provider whose api_pattern matches the start of a base URL. */
static int lg_price_provider_url(struct lg_price_cat *c, const char *url)
{
	uint32_t i;
	for (i = 0; i < c->j.t[0].size; i++) {
		int p = lg_json_at(&c->j, 0, i), t = lg_json_get(&c->j, c->s, p, "api_pattern");
		char pat[600];
		lg_str v;
		if (lg_json_type(&c->j, t) != LG_J_STR) continue;
		v = lg_price_text(c, t);
		snprintf(pat, sizeof pat, "^(?:%.*s)", (int)v.n, v.p);
		if (lg_rx_test(pat, strlen(pat), url, strlen(url)) == 1) return p;
	}
	return -1;
}

/* The first model of provider p that matches, then of its fallback_model_providers (once). */
static int lg_price_model(struct lg_price_cat *c, int p, const char *model, int depth)
{
	int ms = lg_json_get(&c->j, c->s, p, "models"), fb;
	uint32_t i;
	for (i = 0; ms >= 0 && i < c->j.t[ms].size; i++) {
		int m = lg_json_at(&c->j, ms, i), mt = lg_json_get(&c->j, c->s, m, "match");
		if (mt >= 0 && lg_price_match(c, mt, model)) return m;
	}
	fb = lg_json_get(&c->j, c->s, p, "fallback_model_providers");
	for (i = 0; depth == 0 && fb >= 0 && i < c->j.t[fb].size; i++) {
		int f = lg_json_at(&c->j, fb, i), q, m;
		char id[128];
		lg_str v;
		if (lg_json_type(&c->j, f) != LG_J_STR) continue;
		v = lg_json_raw(&c->j, c->s, f);
		snprintf(id, sizeof id, "%.*s", (int)v.n, v.p);
		for (q = 0; q < (int)c->j.t[0].size; q++) {
			int pp = lg_json_at(&c->j, 0, (uint32_t)q), t = lg_json_get(&c->j, c->s, pp, "id");
			if (t >= 0 && lg_str_eq(lg_json_raw(&c->j, c->s, t), id) && (m = lg_price_model(c, pp, model, 1)) >= 0)
				return m;
		}
	}
	return -1;
}

/* Dates written -YYYYMMDD are also looked up as -YYYY-MM-DD, as the catalog's own code does. */
static void lg_price_dashdate(char *out, size_t cap, const char *in)
{
	size_t i = 0, o = 0, n = strlen(in);
	while (i < n && o + 3 < cap) {
		if (in[i] == '-' && i + 9 <= n && in[i + 1] == '2' && in[i + 2] == '0') {
			size_t d;
			for (d = 1; d <= 8 && isdigit((unsigned char)in[i + d]); d++) {
			}
			if (d == 9 && (i + 9 == n || in[i + 9] == '-' || in[i + 9] == ':') && o + 12 < cap) {
				memcpy(out + o, in + i, 5), o += 5;
				out[o++] = '-', memcpy(out + o, in + i + 5, 2), o += 2;
				out[o++] = '-', memcpy(out + o, in + i + 7, 2), o += 2;
				i += 9;
				continue;
			}
		}
		out[o++] = in[i++];
	}
	out[o] = 0;
}

/* The prices in force now: a plain object, or the last entry of a list whose start_date has
 * passed (time_of_day entries are left out: a target has one price; the first entry is the
 * fallback, as in the catalog's code). */
static int lg_price_now(struct lg_price_cat *c, int prices, int64_t now_ms)
{
	uint32_t i;
	if (lg_json_type(&c->j, prices) == LG_J_OBJ) return prices;
	if (lg_json_type(&c->j, prices) != LG_J_ARR || !c->j.t[prices].size) return -1;
	for (i = c->j.t[prices].size; i-- > 0;) {
		int e = lg_json_at(&c->j, prices, i), con = lg_json_get(&c->j, c->s, e, "constraint");
		int ty = lg_json_get(&c->j, c->s, con, "type"), sd = lg_json_get(&c->j, c->s, con, "start_date");
		if (con < 0) return lg_json_get(&c->j, c->s, e, "prices");
		if (ty >= 0 && lg_str_eq(lg_json_raw(&c->j, c->s, ty), "start_date") && sd >= 0) {
			lg_str d = lg_json_raw(&c->j, c->s, sd);
			int y = 0, mo = 0, dd = 0;
			char tmp[16];
			snprintf(tmp, sizeof tmp, "%.*s", (int)LG_MIN(d.n, 10), d.p);
			if (sscanf(tmp, "%d-%d-%d", &y, &mo, &dd) == 3 && lg_days_from_civil(y, mo, dd) * 86400000 <= now_ms)
				return lg_json_get(&c->j, c->s, e, "prices");
		}
	}
	return lg_json_get(&c->j, c->s, lg_json_at(&c->j, prices, 0), "prices");
}

/* One price of the catalog into the target's kind k: a number, or {base, tiers}. 1: found. */
static int lg_price_take(struct lg_price_cat *c, int pr, const char *name, struct lg_target *t, int k)
{
	int v = lg_json_get(&c->j, c->s, pr, name), tiers;
	uint32_t i;
	double base;
	if (lg_json_type(&c->j, v) == LG_J_NUM) {
		base = lg_json_num(&c->j, c->s, v, 0);
		tiers = -1;
	} else if (lg_json_type(&c->j, v) == LG_J_OBJ) {
		base = lg_json_num(&c->j, c->s, lg_json_get(&c->j, c->s, v, "base"), 0);
		tiers = lg_json_get(&c->j, c->s, v, "tiers");
	} else
		return 0;
	t->ntier[k] = 0;
	for (i = 0; tiers >= 0 && i < c->j.t[tiers].size && t->ntier[k] < LG_PRICE_TIERS; i++) {
		int e = lg_json_at(&c->j, tiers, i);
		struct lg_price_tier *pt = &t->tier[k][t->ntier[k]++];
		int j2;
		pt->start = (int64_t)lg_json_num(&c->j, c->s, lg_json_get(&c->j, c->s, e, "start"), 0);
		pt->price = lg_json_num(&c->j, c->s, lg_json_get(&c->j, c->s, e, "price"), 0);
		for (j2 = t->ntier[k] - 1; j2 > 0 && t->tier[k][j2 - 1].start > t->tier[k][j2].start; j2--) {
			struct lg_price_tier sw = t->tier[k][j2];
			t->tier[k][j2] = t->tier[k][j2 - 1];
			t->tier[k][j2 - 1] = sw;
		}
	}
	if (k == 0) t->in = base;
	else if (k == 1) t->out = base;
	else if (k == 2) t->cache_read = base;
	else t->cache_write = base;
	return 1;
}

/* The catalog's name for a provider type, when it differs. */
static const char *lg_price_type_id(const char *type)
{
	if (strcmp(type, "gemini") == 0) return "google";
	if (strcmp(type, "bedrock") == 0) return "aws";
	return type;
}

/* Gives every target without prices of its own (in= out= cache_read= cache_write=, each on its
 * own) the catalog's, and says where each came from (t->price_src). Unknown targets keep 0. */
static LG_COLD int lg_price_apply(struct lg_cfgp *p)
{
	struct lg_cfg *c = p->c;
	struct lg_price_cat cat;
	char *text = NULL;
	size_t len = 0;
	int i, k, e = 0, ntok;
	int64_t now = lg_wall_ms();
	memset(&cat, 0, sizeof cat);
	if (c->prices && *c->prices) {
		struct lg_json cnt;
		p->line = c->prices_line;
		if (!(text = lg_read_file(c->prices, 64u << 20, &len, &e)))
			return lg_cfg_err(p, "prices %s: cannot read: %s", c->prices, strerror(e));
		memset(&cnt, 0, sizeof cnt);
		ntok = lg_json_parse(&cnt, text, len);
		if (ntok > 0 && (cat.j.t = (struct lg_jtok *)malloc((size_t)ntok * sizeof *cat.j.t))) {
			cat.j.cap = (uint32_t)ntok;
			ntok = lg_json_parse(&cat.j, text, len);
		} else if (ntok > 0)
			ntok = LG_JSON_NOMEM;
		else
			cat.j = cnt;
		if (ntok <= 0 || cat.j.t[0].type != LG_J_ARR) {
			size_t off = ntok <= 0 ? cat.j.err_off : 0, ln = 1, col = 1, q;
			for (q = 0; q < off && q < len; q++) {
				if (text[q] == '\n') ln++, col = 1;
				else col++;
			}
			lg_cfg_err(p, "prices %s: %s at byte %lu (line %lu, column %lu)", c->prices,
			           ntok == LG_JSON_NOMEM ? "out of memory"
			           : ntok <= 0          ? (cat.j.err ? cat.j.err : "malformed JSON")
			                                : "not a genai-prices catalog (expected an array of providers)",
			           (unsigned long)off, (unsigned long)ln, (unsigned long)col);
			free(cat.j.t);
			free(text);
			return -1;
		}
		cat.s = text;
		cat.n = len;
	}
	for (i = 0; i < c->nmodels; i++)
		for (k = 0; k < c->models[i]->nt; k++) {
			struct lg_target *t = &c->models[i]->t[k];
			int pv = -1, md = -1, pr = -1, got = 0, kind;
			static const char *const names[4] = {"input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok"};
			if (cat.s && (t->price_set & 3) != 3) {
				char alt[256];
				pv = lg_price_provider(&cat, t->prov->name);
				if (pv < 0 && t->prov->base_url) pv = lg_price_provider_url(&cat, t->prov->base_url);
				if (pv < 0) pv = lg_price_provider(&cat, lg_price_type_id(t->prov->row->name));
				if (pv >= 0 && (md = lg_price_model(&cat, pv, t->upstream, 0)) < 0) {
					lg_price_dashdate(alt, sizeof alt, t->upstream);
					if (strcmp(alt, t->upstream) != 0) md = lg_price_model(&cat, pv, alt, 0);
				}
				if (md >= 0) pr = lg_price_now(&cat, lg_json_get(&cat.j, cat.s, md, "prices"), now);
			}
			for (kind = 0; kind < 4; kind++)
				if (!(t->price_set & (1 << kind)) && pr >= 0 && lg_price_take(&cat, pr, names[kind], t, kind))
					got |= 1 << kind;
			/* cache tokens with no price of their own cost what input does, tiers and all */
			for (kind = 2; kind < 4; kind++)
				if (!(t->price_set & (1 << kind)) && !(got & (1 << kind))) {
					if (kind == 2) t->cache_read = t->in;
					else t->cache_write = t->in;
					t->ntier[kind] = t->ntier[0];
					memcpy(t->tier[kind], t->tier[0], sizeof t->tier[0]);
				}
			if (got) {
				char src[300];
				int pid = lg_json_get(&cat.j, cat.s, pv, "id"), mid = lg_json_get(&cat.j, cat.s, md, "id");
				lg_str a = lg_json_raw(&cat.j, cat.s, pid), b = mid >= 0 ? lg_json_raw(&cat.j, cat.s, mid) : a;
				snprintf(src, sizeof src, "%scatalog %.*s/%.*s", t->price_set ? "ini+" : "", (int)a.n, a.p,
				         (int)b.n, b.p);
				t->price_src = lg_cfg_str(c, lg_strz(src));
			} else
				t->price_src = t->price_set ? "ini" : NULL;
		}
	free(cat.j.t);
	free(text);
	return 0;
}

/* The price of one kind for a request with `input` prompt tokens: the last tier it passes. */
static double lg_price_of(const struct lg_target *t, int kind, double base, int64_t input)
{
	int i;
	for (i = 0; i < t->ntier[kind]; i++)
		if (input > t->tier[kind][i].start) base = t->tier[kind][i].price;
	return base;
}

/* Cost in USD of a request's tokens at target t's prices (USD per million tokens), the
 * long-context tiers chosen by the whole prompt (cached tokens included). */
static double lg_price_cost(const struct lg_target *t, int64_t prompt, int64_t cached, int64_t cache_write,
                            int64_t completion)
{
	int64_t uncached = prompt - cached - cache_write;
	if (uncached < 0) uncached = 0;
	return ((double)uncached * lg_price_of(t, 0, t->in, prompt) +
	        (double)cached * lg_price_of(t, 2, t->cache_read, prompt) +
	        (double)cache_write * lg_price_of(t, 3, t->cache_write, prompt) +
	        (double)completion * lg_price_of(t, 1, t->out, prompt)) /
	       1e6;
}

#ifndef LLMGW_NO_MAIN
/* `llmgw -t`: every target, the price it charges and where it came from. */
static LG_COLD void lg_price_list(const struct lg_cfg *c, FILE *f)
{
	int i, k, none = 0;
	for (i = 0; i < c->nmodels; i++)
		for (k = 0; k < c->models[i]->nt; k++) {
			const struct lg_target *t = &c->models[i]->t[k];
			fprintf(f, "  model %s target %s %s: in=%g out=%g cache_read=%g cache_write=%g", c->models[i]->name,
			        t->prov_name, t->upstream, t->in, t->out, t->cache_read, t->cache_write);
			if (t->ntier[0] || t->ntier[1])
				fprintf(f, " (above %lld prompt tokens: in=%g out=%g)",
				        (long long)(t->ntier[0] ? t->tier[0][0].start : t->tier[1][0].start),
				        lg_price_of(t, 0, t->in, INT64_MAX), lg_price_of(t, 1, t->out, INT64_MAX));
			fprintf(f, " [%s]\n", t->price_src ? t->price_src : "no price");
			if (!t->price_src) none++;
		}
	for (i = 0; i < c->nmodels; i++)
		for (k = 0; k < c->models[i]->nt; k++)
			if (!c->models[i]->t[k].price_src && c->models[i]->t[k].prov->row->run == NULL)
				fprintf(stderr, "llmgw: warning: model %s target %s %s has no price (neither in= out= nor in %s): "
				                "it is billed as free\n",
				        c->models[i]->name, c->models[i]->t[k].prov_name, c->models[i]->t[k].upstream,
				        c->prices && *c->prices ? c->prices : "a prices catalog");
	LG_UNUSED(none);
}
#endif /* LLMGW_NO_MAIN: only main's -t uses it */

static LG_COLD int lg_cfg_validate(struct lg_cfgp *p)
{
	struct lg_cfg *c = p->c;
	int i, k;
	for (i = 0; i < c->nprov; i++) {
		struct lg_provider *pv = c->prov[i];
		const struct lg_prov_row *row = pv->row;
		const char *miss;
		p->line = pv->line;
		if (!row->run && !pv->host) { /* the provider's own address by default */
			char url[300];
			const char *d = row->base_url, *pc = d ? strstr(d, "%s") : NULL;
			url[0] = 0;
			if (d && !pc) lg_cpy(url, sizeof url, d);
			if (pc && pv->aws_region)
				snprintf(url, sizeof url, "%.*s%s%s", (int)(pc - d), d, pv->aws_region, pc + 2);
			if (!url[0])
				return lg_cfg_err(p, "provider %s needs a base_url%s", pv->name, pc ? " or aws_region" : "");
			if (lg_cfg_url(p, pv, lg_strz(url))) return -1;
		}
		if (row->check && (miss = row->check(pv)))
			return lg_cfg_err(p, "provider %s (%s) needs %s", pv->name, row->name, miss);
		if (pv->responses && (row->wire != LG_WIRE_OPENAI || row->run))
			return lg_cfg_err(p, "provider %s: responses = yes is for type openai or azure, not %s", pv->name,
			                  row->name);
		if (pv->tls && !LLMGW_TLS)
			return lg_cfg_err(p, "provider %s: base_url is https but this build has no TLS "
			                     "(build with make TLS=1)", pv->name);
	}
	for (i = 0; i < c->nmodels; i++) {
		struct lg_model *m = c->models[i];
		p->line = m->line;
		if (m->nt == 0) return lg_cfg_err(p, "model %s has no target", m->name);
		for (k = 0; k < m->nt; k++) {
			struct lg_target *t = &m->t[k];
			struct lg_name *e = lg_names_get(&p->names, 'p', t->prov_name, strlen(t->prov_name), 0);
			t->prov = e ? (struct lg_provider *)e->owner : NULL;
			p->line = t->line;
			if (!t->prov)
				return lg_cfg_err(p, "target names unknown provider '%s'", t->prov_name);
		}
		/* names and aliases must be unique across models */
		p->line = m->line;
		for (k = -1; k < m->naliases; k++) {
			const char *nm = k < 0 ? m->name : m->aliases[k];
			struct lg_name *e = lg_names_get(&p->names, 'm', nm, strlen(nm), 1);
			if (!e) return lg_cfg_err(p, "out of memory");
			if (e->owner && e->owner != m) {
				if (k < 0)
					return lg_cfg_err(p, "model name %s is already used by model %s", nm,
					                  ((struct lg_model *)e->owner)->name);
				return lg_cfg_err(p, "alias %s of model %s is already used by model %s", nm, m->name,
				                  ((struct lg_model *)e->owner)->name);
			}
			e->owner = m;
			e->line = m->line;
		}
	}
	for (i = 0; i < c->nmodels; i++) { /* fallbacks, once every name is known */
		struct lg_model *m = c->models[i];
		p->line = m->line;
		for (k = 0; k < m->nfallbacks; k++)
			if (!lg_names_get(&p->names, 'm', m->fallbacks[k], strlen(m->fallbacks[k]), 0) &&
			    !strchr(m->fallbacks[k], '/'))
				return lg_cfg_err(p, "model %s: fallback '%s' is not a configured model", m->name,
				                  m->fallbacks[k]);
	}
	p->line = c->tls_line;
	if ((c->tls_cert || c->tls_key) && !LLMGW_TLS)
		return lg_cfg_err(p, "tls_cert/tls_key need a build with TLS (make TLS=1)");
	if (!c->tls_cert != !c->tls_key) return lg_cfg_err(p, "tls_cert and tls_key go together");
	{
		/* proxy = http://[user:pass@]host:port, or HTTPS_PROXY from the
		 * environment; NO_PROXY lists hosts reached directly */
		const char *px = c->proxy && *c->proxy ? c->proxy : getenv("HTTPS_PROXY");
		const char *np = getenv("NO_PROXY");
		if (!px || !*px) px = getenv("https_proxy");
		if (!np) np = getenv("no_proxy");
		if (np) c->no_proxy = lg_cfg_str(c, lg_strz(np));
		if (px && *px) {
			lg_str v = lg_strz(px), host, cred = lg_str_of("", 0);
			size_t q, at = 0;
			long port = 0;
			int bad_scheme = 0;
			if (v.n > 7 && memcmp(v.p, "http://", 7) == 0)
				v.p += 7, v.n -= 7;
			else if (lg_memmem(v.p, v.n, "://") || (v.n > 5 && memcmp(v.p, "http:", 5) == 0))
				bad_scheme = 1; /* https://, socks5://, http:host */
			while (v.n && v.p[v.n - 1] == '/') v.n--;
			for (q = 0; q < v.n; q++)
				if (v.p[q] == '@') at = q + 1;
			if (at) cred = lg_str_of(v.p, at - 1), v.p += at, v.n -= at;
			for (q = v.n; q > 0 && v.p[q - 1] != ':'; q--) {
			}
			host = lg_str_of(v.p, q ? q - 1 : 0);
			for (; q && q < v.n && v.p[q] >= '0' && v.p[q] <= '9' && port <= 65535; q++)
				port = port * 10 + (v.p[q] - '0');
			p->line = c->proxy_line;
			if (!host.n || q != v.n || port < 1 || port > 65535 || bad_scheme) {
				if (!c->proxy_line) {
					snprintf(p->err, p->errlen, "%s: HTTPS_PROXY must be http://[user:pass@]host:port", p->file);
					return -1;
				}
				return lg_cfg_err(p, "proxy must be http://[user:pass@]host:port");
			}
			if (host.n > 2 && host.p[0] == '[') host.p++, host.n -= 2;
			c->proxy_host = lg_cfg_str(c, host);
			c->proxy_port = (int)port;
			if (cred.n) {
				char *b64 = (char *)lg_arena_alloc(&c->a, cred.n * 2 + 8);
				if (!b64) return lg_cfg_err(p, "out of memory");
				lg_base64((const unsigned char *)cred.p, cred.n, b64);
				c->proxy_auth = b64;
			}
		}
	}
	if (c->nlisten == 0) {
		const char **slot = (const char **)lg_cfg_push(c, &c->listen, &c->nlisten, sizeof *slot);
		if (!slot) return lg_cfg_err(p, "out of memory");
		*slot = "127.0.0.1:8080";
	}
	for (i = 0; i < c->nlisten; i++) { /* what start-up would refuse, refused here with the line */
		struct sockaddr_storage sa;
		socklen_t sl;
		int tls;
		const char *why = lg_cfg_listen_addr(c->listen[i], c->tls_cert != NULL, &sa, &sl, &tls);
		p->line = c->listen_lines ? c->listen_lines[i] : 0;
		if (why) return lg_cfg_err(p, "listen %s: %s", c->listen[i], why);
		if (tls && (!LLMGW_TLS || !c->tls_cert))
			return lg_cfg_err(p, "listen %s: a TLS listener needs tls_cert and tls_key%s", c->listen[i],
			                  LLMGW_TLS ? "" : " and a build with TLS");
	}
	if (lg_cfg_store(p) || lg_price_apply(p)) return -1;
	p->line = c->state_line;
	if (c->state_dir && *c->state_dir) { /* there, or made at start in a writable parent */
		struct stat st;
		if (stat(c->state_dir, &st) == 0 ? !lg_cfg_writable(c->state_dir, 1) : !lg_cfg_writable(c->state_dir, 0))
			return lg_cfg_err(p, "state_dir %s is not a writable directory (nor can it be made)", c->state_dir);
	}
	p->line = c->log_line;
	if (c->access_log && *c->access_log && strcmp(c->access_log, "-") != 0 && !lg_cfg_writable(c->access_log, 0))
		return lg_cfg_err(p, "access_log %s: the file cannot be written or its directory does not exist",
		                  c->access_log);
	if (c->auth_none)
		for (i = 0; i < c->nlisten; i++)
			if (!lg_cfg_is_loopback(c->listen[i])) {
				p->line = c->listen_lines ? c->listen_lines[i] : c->auth_line;
				return lg_cfg_err(p, "auth = none (line %d) is refused on the non-loopback listener %s "
				                     "(add [key.*] sections and auth = keys)", c->auth_line, c->listen[i]);
			}
	return 0;
}

static LG_COLD int lg_cfg_name_ok(lg_str n)
{
	size_t i;
	if (!n.n) return 0;
	for (i = 0; i < n.n; i++)
		if ((unsigned char)n.p[i] <= ' ' || n.p[i] == '"' || n.p[i] == '\\') return 0;
	return 1;
}

/* Builds a config snapshot from INI text. On error returns NULL and writes
 * "file:line: message" to err. */
static LG_COLD struct lg_cfg *lg_cfg_parse(const char *text, size_t len, const char *file, char *err,
                                   size_t errlen)
{
	struct lg_arena a = {NULL, 0};
	struct lg_cfg *c = (struct lg_cfg *)lg_arena_alloc(&a, sizeof *c);
	struct lg_cfgp p;
	struct lg_ini in;
	int kind, sec = 0, r = 0; /* sec: 0 none, else LG_KS_ */
	const struct lg_cfg_key *row;
	int secid = 0, nsec = 1;  /* which section the keys belong to (1: [gateway]) */
	void *cur = NULL;
	if (!c) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	c->a = a;
	c->refs = 1;
	c->path = lg_cfg_str(c, lg_strz(file));
	memset(&p, 0, sizeof p);
	p.c = c;
	p.file = file;
	p.err = err;
	p.errlen = errlen;
	lg_cfg_defaults(&p, LG_KS_GATEWAY, c);
	lg_cfg_defaults(&p, LG_KS_STORE, c);
	memset(&in, 0, sizeof in);
	if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) text += 3, len -= 3; /* a UTF-8 BOM */
	in.s = text;
	in.n = len;
	while (r == 0 && (kind = lg_ini_next(&in)) != LG_INI_END) {
		p.line = in.line;
		if (kind == LG_INI_ERROR) {
			r = lg_cfg_err(&p, "%s", in.err);
			break;
		}
		if (kind == LG_INI_SECTION) {
			lg_str s = in.section, name;
			size_t dot;
			for (dot = 0; dot < s.n && s.p[dot] != '.'; dot++) {
			}
			name = lg_str_of(s.p + dot + 1, dot < s.n ? s.n - dot - 1 : 0);
			if (lg_str_eq(s, "gateway")) {
				sec = 1;
				secid = 1; /* [gateway] may come back: its keys still count once */
				continue;
			}
			if (lg_str_eq(s, "store")) {
				if (c->store_sec) {
					r = lg_cfg_err(&p, "[store] is given twice (first on line %d)", c->store_sec);
					break;
				}
				c->store_sec = in.line;
				sec = LG_KS_STORE;
				secid = ++nsec;
				continue;
			}
			secid = ++nsec;
			if (dot == s.n || !lg_cfg_name_ok(name)) {
				r = lg_cfg_err(&p, "unknown section [%.*s] (gateway, provider.NAME, model.NAME, "
				                   "key.NAME, store)", (int)s.n, s.p);
				break;
			}
			if (lg_str_eq(lg_str_of(s.p, dot), "provider")) {
				struct lg_provider **slot;
				struct lg_name *e = lg_names_get(&p.names, 'p', name.p, name.n, 1);
				if (!e) return NULL;
				if (e->line) {
					r = lg_cfg_err(&p, "provider %.*s is defined twice (first on line %d)", (int)name.n, name.p,
					               e->line);
					break;
				}
				e->line = in.line;
				slot = (struct lg_provider **)lg_cfg_push(c, &c->prov, &c->nprov, sizeof *slot);
				if (!slot || !(*slot = (struct lg_provider *)lg_arena_alloc(&c->a, sizeof **slot)))
					return NULL;
				(*slot)->name = lg_cfg_str(c, name);
				(*slot)->line = in.line;
				lg_cfg_defaults(&p, LG_KS_PROVIDER, *slot);
				cur = e->owner = *slot;
				sec = 2;
			} else if (lg_str_eq(lg_str_of(s.p, dot), "model")) {
				struct lg_model **slot = (struct lg_model **)lg_cfg_push(c, &c->models, &c->nmodels, sizeof *slot);
				if (!slot || !(*slot = (struct lg_model *)lg_arena_alloc(&c->a, sizeof **slot)))
					return NULL;
				(*slot)->name = lg_cfg_str(c, name);
				(*slot)->line = in.line;
				lg_cfg_defaults(&p, LG_KS_MODEL, *slot);
				cur = *slot;
				sec = 3;
			} else if (lg_str_eq(lg_str_of(s.p, dot), "key")) {
				struct lg_key **slot;
				struct lg_name *e;
				if (name.n > 63) {
					r = lg_cfg_err(&p, "key name %.*s... is longer than 63 characters", 20, name.p);
					break;
				}
				if (!(e = lg_names_get(&p.names, 'k', name.p, name.n, 1))) return NULL;
				if (e->line) {
					r = lg_cfg_err(&p, "key %.*s is defined twice (first on line %d)", (int)name.n, name.p, e->line);
					break;
				}
				e->line = in.line;
				slot = (struct lg_key **)lg_cfg_push(c, &c->keys, &c->nkeys, sizeof *slot);
				if (!slot || !(*slot = (struct lg_key *)lg_arena_alloc(&c->a, sizeof **slot)))
					return NULL;
				(*slot)->name = lg_cfg_str(c, name);
				(*slot)->line = in.line;
				(*slot)->hash[0] = 1; /* no secret yet: checked below */
				lg_cfg_defaults(&p, LG_KS_KEY, *slot);
				cur = *slot;
				sec = 4;
			} else {
				r = lg_cfg_err(&p, "unknown section [%.*s] (gateway, provider.NAME, model.NAME, "
				                   "key.NAME, store)", (int)s.n, s.p);
			}
			continue;
		}
		if (sec && !((row = lg_cfg_key_find(sec, in.key)) && row->repeat)) { /* a repeatable key; any other once */
			struct lg_name *e = lg_names_get(&p.keys, secid, in.key.p, in.key.n, 1);
			if (!e) {
				r = lg_cfg_err(&p, "out of memory");
				break;
			}
			if (e->line) {
				r = lg_cfg_err(&p, "'%.*s' is set twice in this section (first on line %d): remove one",
				               (int)in.key.n, in.key.p, e->line);
				break;
			}
			e->line = in.line;
		}
		if (sec == 0)
			r = lg_cfg_err(&p, "key '%.*s' outside of any section", (int)in.key.n, in.key.p);
		else if (sec == LG_KS_GATEWAY || sec == LG_KS_STORE)
			r = lg_cfg_key(&p, sec, c, NULL, in.key, in.value);
		else
			r = lg_cfg_key(&p, sec, cur, *(const char *const *)cur, in.key, in.value); /* each starts with name */
	}
	if (r == 0) {
		int i;
		for (i = 0; i < c->nprov && r == 0; i++)
			if (!c->prov[i]->row) {
				p.line = c->prov[i]->line;
				r = lg_cfg_err(&p, "provider %s has no type", c->prov[i]->name);
			}
		for (i = 0; i < c->nkeys && r == 0; i++) {
			static const unsigned char none[32] = {1};
			if (memcmp(c->keys[i]->hash, none, 32) == 0) {
				p.line = c->keys[i]->line;
				r = lg_cfg_err(&p, "key %s has no secret", c->keys[i]->name);
			}
		}
	}
	if (r == 0) r = lg_cfg_validate(&p);
	free(p.names.t);
	free(p.keys.t);
	if (r) {
		lg_cfg_free(c);
		return NULL;
	}
	return c;
}

/* ===== 6. HTTP parsing ================================================= */

/* Parsers over (buf, len) with caller-owned output, in the manner of
 * picohttpparser: they return the bytes consumed, LG_HTTP_PARTIAL (need
 * more) or LG_HTTP_ERR. Views point into buf and stay valid while it does. */
#define LG_HTTP_ERR -1
#define LG_HTTP_PARTIAL -2
#define LG_HTTP_TOOMANY -3 /* more header lines than LLMGW_MAX_HEADERS */

struct lg_http_hdr {
	lg_str name, value;
};

struct lg_http {
	lg_str method, target, reason;
	int minor, status, nh;
	struct lg_http_hdr h[LLMGW_MAX_HEADERS];
	/* framing, filled by lg_http_framing() */
	int64_t clen; /* -1: none */
	int chunked, close, expect100;
	const char *err; /* what was wrong, for the 400 message */
};

/* tchar of RFC 9110: letters, digits and !#$%&'*+-.^_`|~ */
static const unsigned char lg_tchar[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0,
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 0,
};

static int lg_http_tchar(int c) { return c >= 0 && c < 256 && lg_tchar[c]; }

/* Where the head ends (just past the blank line), or 0 while incomplete.
 * from: where the previous call stopped looking, to stay linear when bytes
 * arrive one at a time. */
static size_t lg_http_head_end(const char *b, size_t n, size_t from)
{
	size_t i = from > 3 ? from - 3 : 0, lead = 0;
	while (lead < n && (b[lead] == '\r' || b[lead] == '\n')) lead++; /* blank lines before a request */
	if (i < lead) i = lead;
	for (; i < n; i++) {
		const char *lf = (const char *)memchr(b + i, '\n', n - i);
		if (!lf) return 0;
		i = (size_t)(lf - b);
		if (i + 1 < n && b[i + 1] == '\n') return i + 2;
		if (i + 2 < n && b[i + 1] == '\r' && b[i + 2] == '\n') return i + 3;
	}
	return 0;
}

/* Reads one line [*i, eol) and moves *i past its LF; -1 if none. */
static int lg_http_line(const char *b, size_t n, size_t *i, lg_str *line)
{
	size_t st = *i, e;
	const char *lf = *i < n ? (const char *)memchr(b + *i, '\n', n - *i) : NULL;
	if (!lf) {
		*i = n;
		return -1;
	}
	*i = (size_t)(lf - b);
	e = *i;
	(*i)++;
	if (e > st && b[e - 1] == '\r') e--;
	*line = lg_str_of(b + st, e - st);
	return 0;
}

/* Whether a header value holds a control character (tab is allowed);
 * eight bytes at a time while none of them is below 0x20 or 0x7F. */
static int lg_http_ctl(lg_str v)
{
	const unsigned char *p = (const unsigned char *)v.p;
	size_t i = 0;
	for (; i + 8 <= v.n; i += 8) {
		uint64_t x, d;
		memcpy(&x, p + i, 8);
		d = x ^ 0x7F7F7F7F7F7F7F7FULL;
		if ((((x - 0x2020202020202020ULL) & ~x) | ((d - 0x0101010101010101ULL) & ~d)) & 0x8080808080808080ULL)
			break; /* a candidate in these eight: byte by byte from here */
	}
	for (; i < v.n; i++)
		if ((p[i] < 0x20 && p[i] != '\t') || p[i] == 0x7f) return 1;
	return 0;
}

static int lg_http_headers(const char *b, size_t n, size_t *i, struct lg_http *m)
{
	lg_str l;
	m->nh = 0;
	for (;;) {
		size_t k = 0;
		if (lg_http_line(b, n, i, &l)) return LG_HTTP_PARTIAL;
		if (l.n == 0) return 0;
		if (l.p[0] == ' ' || l.p[0] == '\t') {
			m->err = "obsolete header line folding";
			return LG_HTTP_ERR;
		}
		while (k < l.n && lg_http_tchar((unsigned char)l.p[k])) k++;
		if (k == 0 || k == l.n || l.p[k] != ':') {
			m->err = "malformed header line";
			return LG_HTTP_ERR;
		}
		if (m->nh == LLMGW_MAX_HEADERS) return LG_HTTP_TOOMANY;
		m->h[m->nh].name = lg_str_of(l.p, k);
		m->h[m->nh].value = lg_str_trim(lg_str_of(l.p + k + 1, l.n - k - 1));
		if (lg_http_ctl(m->h[m->nh].value)) {
			m->err = "control character in a header value";
			return LG_HTTP_ERR;
		}
		m->nh++;
	}
}

static int lg_http_version(lg_str v, int *minor)
{
	if (v.n != 8 || memcmp(v.p, "HTTP/1.", 7) != 0 || v.p[7] < '0' || v.p[7] > '9') return -1;
	*minor = v.p[7] - '0';
	return 0;
}

/* A request head. Returns the head length, LG_HTTP_PARTIAL, LG_HTTP_ERR
 * (m->err says why) or LG_HTTP_TOOMANY. Leading blank lines are skipped
 * (and counted in the length). */
static int lg_http_parse_req(const char *b, size_t n, struct lg_http *m)
{
	size_t i = 0, k, sp1, sp2;
	lg_str l;
	int r;
	m->err = "malformed request line";
	while (i < n && (b[i] == '\r' || b[i] == '\n')) i++;
	sp1 = i;
	if (lg_http_line(b, n, &i, &l)) {
		/* reject what can never become a request line without waiting */
		for (k = sp1; k < n; k++)
			if (!(lg_http_tchar((unsigned char)b[k]) || b[k] == ' ' || b[k] == '/' ||
			      ((unsigned char)b[k] > 0x20 && (unsigned char)b[k] < 0x7f) || b[k] == '\r'))
				return LG_HTTP_ERR;
		return LG_HTTP_PARTIAL;
	}
	for (k = 0; k < l.n && lg_http_tchar((unsigned char)l.p[k]); k++) {
	}
	if (k == 0 || k >= l.n || l.p[k] != ' ') return LG_HTTP_ERR;
	sp1 = k;
	for (k = sp1 + 1; k < l.n && (unsigned char)l.p[k] > 0x20 && (unsigned char)l.p[k] < 0x7f; k++) {
	}
	if (k == sp1 + 1 || k >= l.n || l.p[k] != ' ') return LG_HTTP_ERR;
	sp2 = k;
	if (lg_http_version(lg_str_of(l.p + sp2 + 1, l.n - sp2 - 1), &m->minor)) {
		m->err = "unsupported HTTP version";
		return LG_HTTP_ERR;
	}
	m->method = lg_str_of(l.p, sp1);
	m->target = lg_str_of(l.p + sp1 + 1, sp2 - sp1 - 1);
	m->status = 0;
	if ((r = lg_http_headers(b, n, &i, m)) != 0) return r;
	return (int)i;
}

/* A response head, same conventions. */
static int lg_http_parse_resp(const char *b, size_t n, struct lg_http *m)
{
	size_t i = 0;
	lg_str l;
	int r;
	m->err = "malformed status line";
	if (lg_http_line(b, n, &i, &l)) {
		if (n >= 5 && memcmp(b, "HTTP/", 5) != 0) return LG_HTTP_ERR;
		return LG_HTTP_PARTIAL;
	}
	if (l.n < 12 || lg_http_version(lg_str_of(l.p, 8), &m->minor) || l.p[8] != ' ' ||
	    !isdigit((unsigned char)l.p[9]) || !isdigit((unsigned char)l.p[10]) ||
	    !isdigit((unsigned char)l.p[11]) || (l.n > 12 && l.p[12] != ' '))
		return LG_HTTP_ERR;
	m->status = (l.p[9] - '0') * 100 + (l.p[10] - '0') * 10 + (l.p[11] - '0');
	m->reason = l.n > 13 ? lg_str_of(l.p + 13, l.n - 13) : lg_str_of("", 0);
	if ((r = lg_http_headers(b, n, &i, m)) != 0) return r;
	return (int)i;
}

static lg_str lg_http_get(const struct lg_http *m, const char *name)
{
	size_t nl = strlen(name);
	int i;
	for (i = 0; i < m->nh; i++)
		if (lg_str_ieqn(m->h[i].name, name, nl)) return m->h[i].value;
	return lg_str_of(NULL, 0);
}

/* Works out how the body is framed. Requests: both Content-Length and
 * Transfer-Encoding, or disagreeing Content-Lengths, are errors (request
 * smuggling). Returns 0, or -1 with m->err, or -2 for an unsupported
 * transfer coding (501). */
static int lg_http_framing(struct lg_http *m, int is_request)
{
	int i, has_te = 0, has_close = 0, has_ka = 0;
	m->clen = -1;
	m->chunked = 0;
	m->expect100 = 0;
	for (i = 0; i < m->nh; i++) {
		lg_str n = m->h[i].name, v = m->h[i].value;
		if (lg_str_ieq(n, "content-length")) {
			/* a list "5, 5" is allowed when every element is the same */
			size_t k = 0;
			if (v.n == 0) {
				m->err = "empty Content-Length";
				return -1;
			}
			while (k < v.n) {
				int64_t x = 0;
				size_t st = k;
				while (k < v.n && v.p[k] == ' ') k++;
				st = k;
				while (k < v.n && v.p[k] >= '0' && v.p[k] <= '9' && x < ((int64_t)1 << 53))
					x = x * 10 + (v.p[k++] - '0');
				while (k < v.n && v.p[k] == ' ') k++;
				if (k == st || (k < v.n && v.p[k] != ',')) {
					m->err = "invalid Content-Length";
					return -1;
				}
				k++;
				if (m->clen >= 0 && m->clen != x) {
					m->err = "conflicting Content-Length headers";
					return -1;
				}
				m->clen = x;
			}
		} else if (lg_str_ieq(n, "transfer-encoding")) {
			has_te = 1;
			if (!lg_str_ieq(v, "chunked")) {
				/* only "chunked" as the one coding is supported */
				m->err = "unsupported Transfer-Encoding (only chunked)";
				return -2;
			}
			m->chunked = 1;
		} else if (lg_str_ieq(n, "connection")) {
			has_close |= lg_str_has_token(v, "close");
			has_ka |= lg_str_has_token(v, "keep-alive");
		} else if (is_request && lg_str_ieq(n, "expect")) {
			if (!lg_str_ieq(v, "100-continue")) {
				m->err = "unsupported Expect";
				return -3;
			}
			m->expect100 = m->minor >= 1;
		}
	}
	m->close = has_close || (m->minor == 0 && !has_ka); /* close always wins */
	if (has_te && m->clen >= 0) {
		if (is_request) {
			m->err = "both Content-Length and Transfer-Encoding";
			return -1;
		}
		m->clen = -1; /* a response: chunked wins, and the connection is not reused */
		m->close = 1;
	}
	if (has_te && m->minor == 0 && is_request) {
		m->err = "Transfer-Encoding in an HTTP/1.0 request";
		return -1;
	}
	return 0;
}

/* Incremental in-place chunked decoder (state in a zeroed struct). */
struct lg_chunked {
	int st, nhex;
	uint64_t rem;
};

enum { LG_CK_SIZE, LG_CK_EXT, LG_CK_SIZE_LF, LG_CK_DATA, LG_CK_DATA_CR, LG_CK_DATA_LF,
       LG_CK_TRAILER_START, LG_CK_TRAILER, LG_CK_END_LF, LG_CK_DONE };

/* Decodes buf[0..*n): decoded bytes move to the front and *n becomes
 * their count. Returns LG_HTTP_PARTIAL while the body goes on, LG_HTTP_ERR
 * on bad framing, or, once the last chunk and trailers are read, the count
 * of bytes that followed the body, which are moved right after the
 * decoded data. */
static long lg_chunked_decode(struct lg_chunked *d, char *buf, size_t *n)
{
	size_t src = 0, dst = 0, len = *n;
	while (src < len && d->st != LG_CK_DONE) {
		char c = buf[src];
		int v;
		switch (d->st) {
		case LG_CK_SIZE:
			if ((v = lg_hexval((unsigned char)c)) >= 0) {
				if (++d->nhex > 15) return LG_HTTP_ERR;
				d->rem = d->rem * 16 + (uint64_t)v;
				src++;
				continue;
			}
			if (d->nhex == 0) return LG_HTTP_ERR;
			if (c == ';' || c == ' ' || c == '\t')
				d->st = LG_CK_EXT;
			else if (c == '\r')
				d->st = LG_CK_SIZE_LF;
			else if (c == '\n')
				goto size_done;
			else
				return LG_HTTP_ERR;
			src++;
			continue;
		case LG_CK_EXT:
			src++;
			if (c == '\n') goto size_done_consumed;
			if (c == '\r') { /* a CR ends the line: a bare one is an error (RFC 9112 2.2) */
				d->st = LG_CK_SIZE_LF;
				continue;
			}
			if ((unsigned char)c < 0x20 && c != '\t') return LG_HTTP_ERR;
			continue;
		case LG_CK_SIZE_LF:
			if (c != '\n') return LG_HTTP_ERR;
		size_done:
			src++;
		size_done_consumed:
			d->nhex = 0;
			d->st = d->rem ? LG_CK_DATA : LG_CK_TRAILER_START;
			continue;
		case LG_CK_DATA: {
			size_t k = (size_t)LG_MIN(d->rem, (uint64_t)(len - src));
			memmove(buf + dst, buf + src, k);
			dst += k, src += k;
			d->rem -= k;
			if (!d->rem) d->st = LG_CK_DATA_CR;
			continue;
		}
		case LG_CK_DATA_CR:
			if (c == '\r')
				d->st = LG_CK_DATA_LF;
			else if (c == '\n')
				d->st = LG_CK_SIZE;
			else
				return LG_HTTP_ERR;
			src++;
			continue;
		case LG_CK_DATA_LF:
			if (c != '\n') return LG_HTTP_ERR;
			d->st = LG_CK_SIZE;
			src++;
			continue;
		case LG_CK_TRAILER_START:
			d->st = c == '\r' ? LG_CK_END_LF : c == '\n' ? LG_CK_DONE : LG_CK_TRAILER;
			src++;
			continue;
		case LG_CK_TRAILER:
			if (c == '\n') d->st = LG_CK_TRAILER_START;
			src++;
			continue;
		case LG_CK_END_LF:
			if (c != '\n') return LG_HTTP_ERR;
			d->st = LG_CK_DONE;
			src++;
			continue;
		}
	}
	if (d->st == LG_CK_DONE) {
		size_t left = len - src;
		memmove(buf + dst, buf + src, left);
		*n = dst;
		return (long)left;
	}
	*n = dst;
	return LG_HTTP_PARTIAL;
}

/* Server-sent events: finds the next complete event in b[0..n). Returns
 * the bytes it takes (> 0) or 0 when no complete event is there yet. Lines
 * end in CRLF, LF or CR. Several data lines are joined with '\n' in
 * scratch, which must hold n bytes; otherwise ev->data points into b. With
 * scratch NULL, an event of several data lines returns (size_t)-1: call
 * again with room. An event with no field (comments, stray blank lines)
 * comes back with ev->fields == 0 and is to be skipped. */
struct lg_sse_ev {
	lg_str event, data, id;
	int fields, ndata;
};

static size_t lg_sse_next(const char *b, size_t n, struct lg_sse_ev *ev, char *scratch)
{
	size_t i = 0, sl = 0, skipped = 0;
	const char *end1;
	/* the common event first, "data: ...\n\n" without a CR: no field parsing */
	if (n > 8 && memcmp(b, "data: ", 6) == 0 && (end1 = (const char *)memchr(b + 6, '\n', n - 6)) != NULL &&
	    (size_t)(end1 - b) + 1 < n && end1[1] == '\n' && !memchr(b + 6, '\r', (size_t)(end1 - b - 6))) {
		ev->event = ev->id = lg_str_of(NULL, 0);
		ev->data = lg_str_of(b + 6, (size_t)(end1 - b - 6));
		ev->fields = ev->ndata = 1;
		return (size_t)(end1 - b) + 2;
	}
	memset(ev, 0, sizeof *ev);
	while (i < n) {
		size_t st = i, e, k;
		lg_str name, val;
		{ /* the line's end: memchr runs far faster than a byte loop over long data lines */
			const char *lf = (const char *)memchr(b + i, '\n', n - i);
			const char *cr = (const char *)memchr(b + i, '\r', (size_t)((lf ? lf : b + n) - (b + i)));
			i = (size_t)((cr ? cr : lf ? lf : b + n) - b);
		}
		if (i >= n) break;
		e = i;
		if (b[i] == '\r') {
			if (i + 1 >= n) break; /* a CRLF may be split across reads */
			if (b[i + 1] == '\n') i++;
		}
		i++;
		if (e == st) { /* blank line: the event ends */
			if (ev->fields) return i;
			skipped = i; /* stray blank lines and comment-only blocks */
			continue;
		}
		if (b[st] == ':') continue; /* comment / keep-alive */
		for (k = st; k < e && b[k] != ':'; k++) {
		}
		name = lg_str_of(b + st, k - st);
		if (k < e) k++;
		if (k < e && b[k] == ' ') k++;
		val = lg_str_of(b + k, e - k);
		ev->fields++;
		if (lg_str_eq(name, "data")) {
			if (ev->ndata == 0) {
				ev->data = val;
			} else {
				if (!scratch) { /* several data lines: the caller must give room to join them */
					memset(ev, 0, sizeof *ev);
					return (size_t)-1;
				}
				if (ev->ndata == 1) {
					memcpy(scratch, ev->data.p, ev->data.n);
					sl = ev->data.n;
				}
				scratch[sl++] = '\n';
				memcpy(scratch + sl, val.p, val.n);
				sl += val.n;
				ev->data = lg_str_of(scratch, sl);
			}
			ev->ndata++;
		} else if (lg_str_eq(name, "event")) {
			ev->event = val;
		} else if (lg_str_eq(name, "id")) {
			ev->id = val;
		}
	}
	if (skipped) memset(ev, 0, sizeof *ev); /* the blank lines can go; the event is not complete */
	return skipped;
}

/* ===== 7. TLS ========================================================== */

/* BearSSL behind a handful of functions: new (client or server), recv,
 * send, events, pending, why, free. The engine is driven by the poll loop
 * and never blocks: records go out while it wants to send (POLLOUT), come
 * in while it wants to receive (POLLIN). Memory per connection: the engine
 * and X.509 contexts (~7 KB) plus the record buffer: 16.7 KB half duplex
 * for upstreams (a request, then its response: never both at once),
 * 33.2 KB full duplex for clients of an HTTPS listener (they may
 * pipeline). Without LLMGW_TLS only the configuration check remains. */

#if LLMGW_TLS

struct lg_tls {
	br_ssl_engine_context *eng;
	union {
		br_ssl_client_context cc;
		br_ssl_server_context sc;
	} u;
	br_x509_minimal_context xc;
	int server, hs_done, eof;
	unsigned char buf[]; /* the record buffer */
};

struct lg_tls_acc { /* accumulates decoder output */
	unsigned char *p;
	size_t n, cap;
	int err;
};

static LG_COLD void lg_tls_acc_add(void *ctx, const void *data, size_t len)
{
	struct lg_tls_acc *a = (struct lg_tls_acc *)ctx;
	if (a->err) return;
	if (a->n + len > a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 4096;
		unsigned char *np;
		while (cap < a->n + len) cap *= 2;
		np = (unsigned char *)realloc(a->p, cap);
		if (!np) {
			a->err = 1;
			return;
		}
		a->p = np;
		a->cap = cap;
	}
	memcpy(a->p + a->n, data, len);
	a->n += len;
}

/* Calls fn for each PEM object of the text. -1 on a PEM syntax error. */
static LG_COLD int lg_tls_pem(const char *text, size_t len,
                      int (*fn)(void *ctx, const char *name, const unsigned char *der, size_t n),
                      void *ctx)
{
	br_pem_decoder_context pc;
	struct lg_tls_acc der;
	char name[128];
	int in = 0, r = 0, pass;
	memset(&der, 0, sizeof der);
	br_pem_decoder_init(&pc);
	for (pass = 0; pass < 2 && r == 0; pass++) {
		/* a last "-----END" line without its newline still ends the object */
		const char *p = pass ? "\n" : text;
		size_t n = pass ? 1 : len;
		while (n > 0 && r == 0) {
			size_t k = br_pem_decoder_push(&pc, p, n);
			p += k, n -= k;
			switch (br_pem_decoder_event(&pc)) {
			case BR_PEM_BEGIN_OBJ:
				snprintf(name, sizeof name, "%s", br_pem_decoder_name(&pc));
				der.n = 0;
				in = 1;
				br_pem_decoder_setdest(&pc, lg_tls_acc_add, &der);
				break;
			case BR_PEM_END_OBJ:
				if (in && !der.err) r = fn(ctx, name, der.p, der.n);
				if (der.err) r = -1;
				in = 0;
				break;
			case BR_PEM_ERROR: r = -1; break;
			default: break;
			}
		}
	}
	free(der.p);
	return r;
}

static LG_COLD void *lg_tls_dup(struct lg_cfg *c, const void *p, size_t n)
{
	void *d = lg_arena_alloc(&c->a, n ? n : 1);
	if (d && n) memcpy(d, p, n);
	return d;
}

struct lg_tls_ta_load {
	struct lg_cfg *c;
	br_x509_trust_anchor *ta;
	size_t n, cap;
};

static LG_COLD int lg_tls_ta_one(void *ctx, const char *name, const unsigned char *der, size_t n)
{
	struct lg_tls_ta_load *L = (struct lg_tls_ta_load *)ctx;
	br_x509_decoder_context dc;
	struct lg_tls_acc dn;
	br_x509_pkey *pk;
	br_x509_trust_anchor *ta;
	if (strcmp(name, "CERTIFICATE") != 0 && strcmp(name, "TRUSTED CERTIFICATE") != 0) return 0;
	memset(&dn, 0, sizeof dn);
	br_x509_decoder_init(&dc, lg_tls_acc_add, &dn);
	br_x509_decoder_push(&dc, der, n);
	pk = br_x509_decoder_get_pkey(&dc);
	if (!pk || dn.err) { /* a certificate BearSSL cannot use: skip it */
		free(dn.p);
		return 0;
	}
	if (L->n == L->cap) {
		size_t cap = L->cap ? L->cap * 2 : 64;
		br_x509_trust_anchor *nt = (br_x509_trust_anchor *)realloc(L->ta, cap * sizeof *nt);
		if (!nt) {
			free(dn.p);
			return -1;
		}
		L->ta = nt;
		L->cap = cap;
	}
	ta = &L->ta[L->n++];
	memset(ta, 0, sizeof *ta);
	ta->dn.data = (unsigned char *)lg_tls_dup(L->c, dn.p, dn.n);
	ta->dn.len = dn.n;
	free(dn.p);
	ta->flags = br_x509_decoder_isCA(&dc) ? BR_X509_TA_CA : 0;
	ta->pkey.key_type = pk->key_type;
	if (pk->key_type == BR_KEYTYPE_RSA) {
		ta->pkey.key.rsa.n = (unsigned char *)lg_tls_dup(L->c, pk->key.rsa.n, pk->key.rsa.nlen);
		ta->pkey.key.rsa.nlen = pk->key.rsa.nlen;
		ta->pkey.key.rsa.e = (unsigned char *)lg_tls_dup(L->c, pk->key.rsa.e, pk->key.rsa.elen);
		ta->pkey.key.rsa.elen = pk->key.rsa.elen;
	} else {
		ta->pkey.key.ec.curve = pk->key.ec.curve;
		ta->pkey.key.ec.q = (unsigned char *)lg_tls_dup(L->c, pk->key.ec.q, pk->key.ec.qlen);
		ta->pkey.key.ec.qlen = pk->key.ec.qlen;
	}
	return 0;
}

static const char lg_tls_ca_paths[][35] = {
    "/etc/ssl/certs/ca-certificates.crt", /* Debian, Ubuntu, Alpine, OpenWrt */
    "/etc/pki/tls/certs/ca-bundle.crt",   /* Fedora, RHEL */
    "/etc/ssl/ca-bundle.pem",             /* openSUSE */
    "/etc/ssl/cert.pem",                  /* macOS, BSDs, some Alpine */
    "/etc/pki/tls/cacert.pem",
};

/* Trust anchors from ca_file, or from the first system bundle found. */
static LG_COLD int lg_tls_load_ca(struct lg_cfg *c, char *err, size_t errlen)
{
	struct lg_tls_ta_load L;
	size_t len = 0, i;
	int e = 0;
	char *text = NULL;
	const char *path = c->ca_file;
	if (path && *path) {
		text = lg_read_file(path, 16u << 20, &len, &e);
		if (!text) {
			snprintf(err, errlen, "%s: cannot read ca_file %s: %s", c->path, path, strerror(e));
			return -1;
		}
	} else {
		for (i = 0; i < LG_COUNTOF(lg_tls_ca_paths) && !text; i++) {
			if ((text = lg_read_file(lg_tls_ca_paths[i], 16u << 20, &len, &e))) path = lg_tls_ca_paths[i];
			else if (e != ENOENT && e != ENOTDIR) {
				snprintf(err, errlen, "%s: cannot read the CA bundle %s: %s", c->path, lg_tls_ca_paths[i],
				         strerror(e));
				return -1;
			}
		}
		if (!text) return 0; /* no bundle: https upstreams fail with a clear reason */
	}
	memset(&L, 0, sizeof L);
	L.c = c;
	if (lg_tls_pem(text, len, lg_tls_ta_one, &L) < 0 || L.n == 0) {
		snprintf(err, errlen, "%s: ca_file %s holds no usable PEM certificate", c->path, path);
		free(text);
		free(L.ta);
		return -1;
	}
	free(text);
	c->ta = (br_x509_trust_anchor *)lg_tls_dup(c, L.ta, L.n * sizeof *L.ta);
	c->nta = L.n;
	c->ca_path = lg_cfg_str(c, lg_strz(path));
	free(L.ta);
	return 0;
}

struct lg_tls_cred_load {
	struct lg_cfg *c;
	br_x509_certificate chain[16];
	size_t n;
	int keys;
};

static LG_COLD int lg_tls_cert_one(void *ctx, const char *name, const unsigned char *der, size_t n)
{
	struct lg_tls_cred_load *L = (struct lg_tls_cred_load *)ctx;
	if (strcmp(name, "CERTIFICATE") != 0) return 0;
	if (L->n == LG_COUNTOF(L->chain)) return -1;
	L->chain[L->n].data = (unsigned char *)lg_tls_dup(L->c, der, n);
	L->chain[L->n++].data_len = n;
	return 0;
}

static LG_COLD int lg_tls_key_one(void *ctx, const char *name, const unsigned char *der, size_t n)
{
	struct lg_tls_cred_load *L = (struct lg_tls_cred_load *)ctx;
	struct lg_cfg *c = L->c;
	br_skey_decoder_context kc;
	if (!strstr(name, "PRIVATE KEY")) return 0;
	br_skey_decoder_init(&kc);
	br_skey_decoder_push(&kc, der, n);
	if (br_skey_decoder_last_error(&kc)) return -1;
	c->skey_type = br_skey_decoder_key_type(&kc);
	if (c->skey_type == BR_KEYTYPE_RSA) {
		const br_rsa_private_key *k = br_skey_decoder_get_rsa(&kc);
		c->rsa = *k;
		c->rsa.p = (unsigned char *)lg_tls_dup(c, k->p, k->plen);
		c->rsa.q = (unsigned char *)lg_tls_dup(c, k->q, k->qlen);
		c->rsa.dp = (unsigned char *)lg_tls_dup(c, k->dp, k->dplen);
		c->rsa.dq = (unsigned char *)lg_tls_dup(c, k->dq, k->dqlen);
		c->rsa.iq = (unsigned char *)lg_tls_dup(c, k->iq, k->iqlen);
	} else if (c->skey_type == BR_KEYTYPE_EC) {
		const br_ec_private_key *k = br_skey_decoder_get_ec(&kc);
		c->ec = *k;
		c->ec.x = (unsigned char *)lg_tls_dup(c, k->x, k->xlen);
	} else {
		return -1;
	}
	L->keys++;
	return 0;
}

/* The listener's certificate chain and private key (RSA or EC). */
static LG_COLD int lg_tls_load_cred(struct lg_cfg *c, char *err, size_t errlen)
{
	struct lg_tls_cred_load L;
	size_t len = 0;
	int e = 0;
	char *text;
	memset(&L, 0, sizeof L);
	L.c = c;
	if (!(text = lg_read_file(c->tls_cert, 4u << 20, &len, &e))) {
		snprintf(err, errlen, "%s: cannot read tls_cert %s: %s", c->path, c->tls_cert, strerror(e));
		return -1;
	}
	if (lg_tls_pem(text, len, lg_tls_cert_one, &L) < 0 || L.n == 0) {
		free(text);
		snprintf(err, errlen, "%s: tls_cert %s holds no PEM certificate (or more than 16)", c->path, c->tls_cert);
		return -1;
	}
	free(text);
	if (!(text = lg_read_file(c->tls_key, 1u << 20, &len, &e))) {
		snprintf(err, errlen, "%s: cannot read tls_key %s: %s", c->path, c->tls_key, strerror(e));
		return -1;
	}
	if (lg_tls_pem(text, len, lg_tls_key_one, &L) < 0 || L.keys != 1) {
		free(text);
		snprintf(err, errlen, "%s: tls_key %s must hold one RSA or EC private key in PEM", c->path, c->tls_key);
		return -1;
	}
	free(text);
	c->chain = (br_x509_certificate *)lg_tls_dup(c, L.chain, L.n * sizeof L.chain[0]);
	c->nchain = L.n;
	{ /* the key must be the one of the first certificate */
		br_x509_decoder_context dc;
		const br_x509_pkey *pk;
		int ok = 0;
		br_x509_decoder_init(&dc, NULL, NULL);
		br_x509_decoder_push(&dc, c->chain[0].data, c->chain[0].data_len);
		pk = br_x509_decoder_get_pkey(&dc);
		if (pk && pk->key_type == c->skey_type && c->skey_type == BR_KEYTYPE_RSA) {
			unsigned char n[512];
			size_t nl = br_rsa_compute_modulus_get_default()(NULL, &c->rsa);
			if (nl <= sizeof n && br_rsa_compute_modulus_get_default()(n, &c->rsa) == nl) {
				const unsigned char *cn = pk->key.rsa.n;
				size_t cl = pk->key.rsa.nlen;
				while (cl && !*cn) cn++, cl--; /* leading zeros do not count */
				ok = cl == nl && memcmp(cn, n, nl) == 0;
			}
		} else if (pk && pk->key_type == c->skey_type && c->skey_type == BR_KEYTYPE_EC) {
			unsigned char q[BR_EC_KBUF_PUB_MAX_SIZE];
			br_ec_public_key pub;
			size_t ql = br_ec_compute_pub(br_ec_get_default(), &pub, q, &c->ec);
			ok = ql && pk->key.ec.curve == c->ec.curve && ql == pk->key.ec.qlen &&
			     memcmp(q, pk->key.ec.q, ql) == 0;
		}
		if (!ok) {
			snprintf(err, errlen, "%s: tls_key %s does not belong to the certificate in tls_cert %s", c->path,
			         c->tls_key, c->tls_cert);
			return -1;
		}
	}
	return 0;
}

/* A TLS client for host (SNI and name check), resuming sess if given. */
static struct lg_tls *lg_tls_client_new(const struct lg_cfg *c, const char *host,
                                        const br_ssl_session_parameters *sess)
{
	struct lg_tls *t = (struct lg_tls *)calloc(1, sizeof *t + BR_SSL_BUFSIZE_MONO);
	if (!t) return NULL;
	br_ssl_client_init_full(&t->u.cc, &t->xc, c->ta, c->nta);
	t->eng = &t->u.cc.eng;
	br_ssl_engine_set_versions(t->eng, BR_TLS12, BR_TLS12);
	br_ssl_engine_set_buffer(t->eng, t->buf, BR_SSL_BUFSIZE_MONO, 0);
	if (sess) br_ssl_engine_set_session_parameters(t->eng, sess);
	if (!br_ssl_client_reset(&t->u.cc, host, sess != NULL)) {
		free(t);
		return NULL;
	}
	return t;
}

static struct lg_tls *lg_tls_server_new(const struct lg_cfg *c)
{
	struct lg_tls *t = (struct lg_tls *)calloc(1, sizeof *t + BR_SSL_BUFSIZE_BIDI);
	if (!t) return NULL;
	if (c->skey_type == BR_KEYTYPE_RSA) {
		br_ssl_server_init_full_rsa(&t->u.sc, c->chain, c->nchain, &c->rsa);
	} else {
		br_x509_decoder_context dc;
		br_x509_decoder_init(&dc, NULL, NULL);
		br_x509_decoder_push(&dc, c->chain[0].data, c->chain[0].data_len);
		br_ssl_server_init_full_ec(&t->u.sc, c->chain, c->nchain,
		                           (unsigned)br_x509_decoder_get_signer_key_type(&dc), &c->ec);
	}
	t->server = 1;
	t->eng = &t->u.sc.eng;
	br_ssl_engine_set_buffer(t->eng, t->buf, BR_SSL_BUFSIZE_BIDI, 1);
	if (!br_ssl_server_reset(&t->u.sc)) {
		free(t);
		return NULL;
	}
	return t;
}

static void lg_tls_free(struct lg_tls *t) { free(t); }

/* Sends the records the engine has. 1: some went, 0: would block or none,
 * -1: socket error. */
static int lg_tls_flushrec(struct lg_tls *t, int fd)
{
	int any = 0;
	while (br_ssl_engine_current_state(t->eng) & BR_SSL_SENDREC) {
		size_t len;
		unsigned char *b = br_ssl_engine_sendrec_buf(t->eng, &len);
		ssize_t n = send(fd, b, len, MSG_NOSIGNAL);
		if (n > 0) {
			br_ssl_engine_sendrec_ack(t->eng, (size_t)n);
			any = 1;
			continue;
		}
		if (n < 0 && errno == EINTR) continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return any;
		return -1;
	}
	return any;
}

/* Feeds the engine what the socket has. 1: some came, 0: would block,
 * -1: error, -2: EOF. */
static int lg_tls_readrec(struct lg_tls *t, int fd)
{
	size_t len;
	unsigned char *b;
	ssize_t n;
	if (!(br_ssl_engine_current_state(t->eng) & BR_SSL_RECVREC)) return 0;
	b = br_ssl_engine_recvrec_buf(t->eng, &len);
	do
		n = recv(fd, b, len, 0);
	while (n < 0 && errno == EINTR);
	if (n > 0) {
		br_ssl_engine_recvrec_ack(t->eng, (size_t)n);
		return 1;
	}
	if (n == 0) {
		t->eof = 1;
		return -2;
	}
	return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
}

/* Like recv(): decrypted bytes, 0 at the end, -1 on error (lg_tls_why
 * says which), -2 when nothing is there yet. Drives the handshake. */
static long lg_tls_recv(struct lg_tls *t, int fd, char *dst, size_t cap)
{
	for (;;) {
		unsigned st = br_ssl_engine_current_state(t->eng);
		int r;
		if (st & BR_SSL_CLOSED) return br_ssl_engine_last_error(t->eng) == BR_ERR_OK ? 0 : -1;
		if (st & BR_SSL_SENDAPP) t->hs_done = 1;
		if (st & BR_SSL_RECVAPP) {
			size_t len;
			unsigned char *b = br_ssl_engine_recvapp_buf(t->eng, &len);
			if (len > cap) len = cap;
			memcpy(dst, b, len);
			br_ssl_engine_recvapp_ack(t->eng, len);
			return (long)len;
		}
		if (st & BR_SSL_SENDREC) {
			if ((r = lg_tls_flushrec(t, fd)) < 0) return -1;
			if (r > 0) continue;
		}
		if (st & BR_SSL_RECVREC) {
			r = lg_tls_readrec(t, fd);
			if (r == 1) continue;
			if (r == -2) return t->hs_done ? 0 : -1; /* a close without close_notify is an EOF */
			return r == 0 ? -2 : -1;
		}
		return -2;
	}
}

/* Like send(): bytes taken (and pushed towards the socket), -1 on error,
 * -2 when the engine cannot take any now (handshake, or records queued). */
static long lg_tls_send(struct lg_tls *t, int fd, const char *src, size_t n)
{
	for (;;) {
		unsigned st = br_ssl_engine_current_state(t->eng);
		int r;
		if (st & BR_SSL_CLOSED) return -1;
		if (st & BR_SSL_SENDAPP) {
			size_t len;
			unsigned char *b = br_ssl_engine_sendapp_buf(t->eng, &len);
			t->hs_done = 1;
			if (len > n) len = n;
			if (len) { /* an ack of 0 would turn a half-duplex engine to output for good */
				memcpy(b, src, len);
				br_ssl_engine_sendapp_ack(t->eng, len);
				br_ssl_engine_flush(t->eng, 0);
			}
			if (lg_tls_flushrec(t, fd) < 0) return -1;
			return (long)len;
		}
		if (st & BR_SSL_SENDREC) {
			if ((r = lg_tls_flushrec(t, fd)) < 0) return -1;
			if (r > 0) continue;
			return -2;
		}
		if (!t->hs_done && (st & BR_SSL_RECVREC)) {
			r = lg_tls_readrec(t, fd);
			if (r == 1) continue;
			return r == 0 ? -2 : -1;
		}
		return -2;
	}
}

/* What the engine waits for: POLLOUT while it has records to send, POLLIN
 * while it wants records. */
static short lg_tls_events(const struct lg_tls *t)
{
	unsigned st = br_ssl_engine_current_state(t->eng);
	short ev = 0;
	if (st & BR_SSL_SENDREC) ev |= POLLOUT;
	if (st & BR_SSL_RECVREC) ev |= POLLIN;
	return ev;
}

static int lg_tls_pending(const struct lg_tls *t)
{
	return (br_ssl_engine_current_state(t->eng) & BR_SSL_RECVAPP) != 0;
}

static int lg_tls_handshaking(const struct lg_tls *t) { return !t->hs_done; }

/* Why the engine failed, in words a user can act on. */
static LG_COLD void lg_tls_why(const struct lg_tls *t, const char *host, char *out, size_t n)
{
	int e = br_ssl_engine_last_error(t->eng);
	switch (e) {
	case BR_ERR_X509_NOT_TRUSTED:
		snprintf(out, n, "TLS: the certificate of %s is not trusted (unknown CA: see ca_file)", host);
		break;
	case BR_ERR_X509_BAD_SERVER_NAME:
		snprintf(out, n, "TLS: the certificate does not match the host name %s", host);
		break;
	case BR_ERR_X509_EXPIRED:
		snprintf(out, n, "TLS: the certificate of %s is expired or not yet valid; if it should be "
		                 "valid, check the system clock (routers often boot without one)", host);
		break;
	case BR_ERR_X509_TIME_UNKNOWN:
		snprintf(out, n, "TLS: cannot check the certificate of %s: the time is unknown", host);
		break;
	case BR_ERR_OK:
		snprintf(out, n, "TLS: the connection to %s closed during the handshake", host);
		break;
	default:
		if (e >= BR_ERR_SEND_FATAL_ALERT)
			snprintf(out, n, "TLS: handshake with %s failed: we sent alert %d", host, e - BR_ERR_SEND_FATAL_ALERT);
		else if (e >= BR_ERR_RECV_FATAL_ALERT)
			snprintf(out, n, "TLS: handshake with %s failed: the server sent alert %d", host,
			         e - BR_ERR_RECV_FATAL_ALERT);
		else if (e >= 32 && e < 64)
			snprintf(out, n, "TLS: the certificate of %s was rejected (X.509 error %d)", host, e);
		else
			snprintf(out, n, "TLS: handshake with %s failed (BearSSL error %d)", host, e);
	}
}

static int lg_tls_setup(struct lg_cfg *c, char *err, size_t errlen)
{
	int i, need_ca = 0;
	for (i = 0; i < c->nprov; i++) need_ca |= c->prov[i]->tls;
	need_ca |= c->store_tls;
	if ((need_ca || (c->ca_file && *c->ca_file)) && lg_tls_load_ca(c, err, errlen)) return -1;
	if (c->tls_cert && lg_tls_load_cred(c, err, errlen)) return -1;
	return 0;
}

#else /* no TLS: the seam stays, every function says no */

struct lg_tls {
	int unused;
};
static void lg_tls_free(struct lg_tls *t) { free(t); }
static long lg_tls_recv(struct lg_tls *t, int fd, char *dst, size_t cap)
{
	LG_UNUSED(t), LG_UNUSED(fd), LG_UNUSED(dst), LG_UNUSED(cap);
	return -1;
}
static long lg_tls_send(struct lg_tls *t, int fd, const char *src, size_t n)
{
	LG_UNUSED(t), LG_UNUSED(fd), LG_UNUSED(src), LG_UNUSED(n);
	return -1;
}
static short lg_tls_events(const struct lg_tls *t)
{
	LG_UNUSED(t);
	return 0;
}
static int lg_tls_pending(const struct lg_tls *t)
{
	LG_UNUSED(t);
	return 0;
}
static int lg_tls_handshaking(const struct lg_tls *t)
{
	LG_UNUSED(t);
	return 0;
}
static int lg_tls_setup(struct lg_cfg *c, char *err, size_t errlen)
{
	LG_UNUSED(c), LG_UNUSED(err), LG_UNUSED(errlen);
	return 0;
}

#endif /* LLMGW_TLS */

/* Snapshots are held and dropped by several loops (workers = N). */
static void lg_cfg_ref(struct lg_cfg *c) { lg_atomic_add(&c->refs, 1); }
static void lg_cfg_unref(struct lg_cfg *c)
{
	if (c && lg_atomic_add(&c->refs, -1) == 0) lg_cfg_free(c);
}

static LG_COLD struct lg_cfg *lg_cfg_load(const char *path, char *err, size_t errlen)
{
	size_t len = 0;
	int e = 0;
	char *text = lg_read_file(path, LLMGW_MAX_CONFIG, &len, &e);
	struct lg_cfg *c;
	if (!text) {
		snprintf(err, errlen, "%s: cannot read: %s", path, strerror(e));
		return NULL;
	}
	c = lg_cfg_parse(text, len, path, err, errlen);
	free(text);
	if (c && lg_tls_setup(c, err, errlen)) {
		lg_cfg_free(c);
		return NULL;
	}
	return c;
}

/* ===== 8. Event loop and connections =================================== */

/* Timers come from one binary min-heap on the gateway; the nearest
 * deadline sets the poll timeout. */
struct lg_timer {
	int64_t at;
	int hidx; /* position in the heap, -1 when not armed */
	void (*fn)(struct llmgw *gw, struct lg_timer *t);
};

enum { LG_ROLE_CLIENT, LG_ROLE_UPSTREAM, LG_ROLE_STORE }; /* STORE: the state store's (13g) */

/* connection flags */
#define LG_F_CLOSE_AFTER 0x01 /* close once the output is flushed */
#define LG_F_DEAD 0x02        /* reaped at the end of the iteration */
#define LG_F_CONNECTING 0x04  /* non-blocking connect in progress */
#define LG_F_EOF 0x08         /* the peer closed its side */
#define LG_F_POOLED 0x10      /* idle in the upstream pool */
#define LG_F_REUSED 0x20      /* upstream connection taken from the pool */
#define LG_F_NOREAD 0x40      /* not polled for input (back-pressure) */
#define LG_F_KEEP 0x80        /* upstream: reusable once the response ends */
#define LG_F_PENDING 0x100    /* TLS: decrypted bytes wait in the engine */

struct lg_req;

/* One socket: a client of ours or an upstream of ours. Memory: the struct
 * (~720 bytes) plus its two buffers, which start empty, grow on demand up
 * to their limits and are given back when the connection goes idle. */
struct lg_conn {
	struct llmgw *gw;
	int fd, idx, role;
	unsigned flags;
	struct lg_buf in, out;
	struct lg_timer tm;
	struct lg_tls *tls;
	void (*on_io)(struct lg_conn *c, int revents);
	struct lg_req *req; /* the request this connection serves, if any */
	/* client side */
	int cstate, advancing;
	size_t scan; /* where head scanning stopped */
	int64_t head_start, body_end; /* body_end: body_timeout's deadline */
	char peer[48];
	struct lg_cfg *tlscfg; /* HTTPS client: BearSSL points into its certificate and key */
	unsigned long auth_gen; /* the last key this connection proved (config generation), for keep-alive */
	int auth_idx;
	unsigned char auth_len;
	char auth_sec[128];
	/* upstream side */
	char origin[300];
	struct lg_origin *org;               /* its pool, once it was pooled */
	struct lg_conn *pool_next, *pool_prev; /* idle in org's pool */
	int64_t idle_since;
	unsigned uses;
};

/* The keep-alive pool of one upstream origin: idle connections, most
 * recently used first. Origins are few (the providers' base URLs) and
 * live as long as the gateway. */
struct lg_origin {
	struct lg_origin *next; /* hash chain of gw->orig */
	struct lg_conn *idle;
	int nidle;
	char name[300];
};
#define LG_ORIG_BUCKETS 64

struct lg_dns;
struct lg_acct;
struct lg_rstate;
struct lg_redis;
struct lg_stjob;
struct lg_dash;

struct llmgw {
	int log_level;
	struct lg_cfg *cfg; /* current snapshot; requests hold their own reference */
	char *cfg_path;
	int wake[2]; /* self-pipe: signals, other threads, DNS answers */
	volatile sig_atomic_t stop_req, reload_req; /* set by signals and other threads: lg_flag_* */
	int running, started, stopping;
	int64_t now, stop_deadline;
	/* poll set: [0] wake pipe, [1..nfixed) listeners, then connections */
	struct pollfd *pfd;
	struct lg_conn **conns;
	int npfd, cappfd, nfixed;
	int nclients, nupstream; /* gauges: other loops read them (lg_gauge_get) */
	char listen_names[16][64];
	char listen_tls[16]; /* which listeners speak HTTPS */
	struct lg_timer **heap;
	int nheap, capheap;
	struct lg_origin *orig[LG_ORIG_BUCKETS]; /* upstream pools, by origin */
	int npool;                                /* idle upstream connections, all origins */
	struct lg_req *reqs; /* requests in flight */
	struct lg_req *dead; /* finished, freed at the end of the iteration */
	int nreqs;
	struct lg_dns *dns;
	int logfd; /* access log, -1 when off */
	char *log_path;
	struct lg_buf logbuf; /* access log lines waiting for the end of the iteration */
	uint64_t rng, seq;
	unsigned long long served;
	int npending; /* connections with LG_F_PENDING: poll without waiting */
	int64_t refused_ms;     /* when a refused connection was last logged */
	unsigned long nrefused; /* connections refused since */
	unsigned long cfg_gen; /* configurations installed so far */
	struct lg_acct *acct; /* key spend and limits, ledger, metrics, recent requests */
	struct lg_dash *dash; /* the dashboard's time series and facts (section 14), the first loop's */
	struct lg_rstate *rs; /* target health, breakers, affinity: survives reloads */
	const struct lg_store *st; /* the only way to rs and acct (section 13a) */
	struct lg_redis *redis;    /* this loop's client of a shared store ([store], 13g) */
	int nstore;                /* store calls waiting for their replies: the loop ends after them */
	int store_inst;            /* the first loop's: instances the store's heartbeat counted (13g) */
	/* what requests leave behind, reused by the next ones instead of going
	 * back to malloc: first-size connection buffers and request objects */
	char *blk[LG_BLKCACHE];
	int nblk;
	/* the read buffer an upstream connection with nothing buffered reads
	 * into (lg_rd_lend); rd_to is the connection that has it */
	struct lg_buf rd;
	struct lg_conn *rd_to;
	struct lg_req *rfree;
	int nrfree;
	/* workers = N: every loop has its own struct llmgw; the first (the one
	 * llmgw_new made) owns what they share, child loops point at it */
	struct lg_shared *sh;
	int child;
	int cfg_workers; /* workers = of the configuration started with */
#if LLMGW_TLS
	struct { /* TLS sessions to resume, per upstream origin */
		char origin[300];
		br_ssl_session_parameters p;
		int64_t used;
	} sess[32];
#endif
};

/* What the event loops of workers = N share. Each loop owns its
 * listeners (SO_REUSEPORT: the kernel spreads connections), connections,
 * timers, upstream pool and requests. Router health, key spend and limits,
 * metrics, the recent-request ring and the ledger are the first loop's,
 * used by all under mu (recursive: the accounting and routing functions
 * that take it call each other). The current configuration is published
 * here; each loop adopts it at its next iteration. */
struct lg_shared {
	pthread_mutex_t mu;
	struct llmgw *w[LG_MAX_WORKERS]; /* w[0]: the first loop */
	pthread_t th[LG_MAX_WORKERS];
	int nw;
	struct lg_cfg *cfg; /* the configuration every loop should run */
	long cfg_gen;     /* read without the lock: lg_atomic_get */
	uint64_t seq;     /* request numbers, across loops */
	long nclients;    /* client connections, across loops (max_connections) */
};

static void lg_lock(struct llmgw *gw)
{
	if (gw->sh) pthread_mutex_lock(&gw->sh->mu);
}

static void lg_unlock(struct llmgw *gw)
{
	if (gw->sh) pthread_mutex_unlock(&gw->sh->mu);
}

/* A connection buffer that is empty gives its memory back: a block of
 * the first size (LLMGW_IO_BUF) waits on gw->blk for the next request. */
static void lg_blk_give(struct llmgw *gw, struct lg_buf *b)
{
	if (lg_buf_used(b)) return;
	if (b->cap == LLMGW_IO_BUF && !b->err && gw->nblk < LG_BLKCACHE) {
		gw->blk[gw->nblk++] = b->p;
		b->p = NULL;
	}
	lg_buf_free(b);
}

/* An empty buffer without memory takes a kept block, if there is one. */
static void lg_blk_take(struct llmgw *gw, struct lg_buf *b)
{
	if (b->cap == 0 && gw->nblk && (!b->max || b->max >= LLMGW_IO_BUF)) {
		b->p = gw->blk[--gw->nblk];
		b->cap = LLMGW_IO_BUF;
		b->off = b->len = 0;
	}
}

static void lg_timer_swap(struct llmgw *gw, int a, int b)
{
	struct lg_timer *t = gw->heap[a];
	gw->heap[a] = gw->heap[b];
	gw->heap[b] = t;
	gw->heap[a]->hidx = a;
	gw->heap[b]->hidx = b;
}

static void lg_timer_up(struct llmgw *gw, int i)
{
	while (i > 0 && gw->heap[(i - 1) / 2]->at > gw->heap[i]->at) {
		lg_timer_swap(gw, i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
}

static void lg_timer_down(struct llmgw *gw, int i)
{
	for (;;) {
		int l = 2 * i + 1, r = l + 1, m = i;
		if (l < gw->nheap && gw->heap[l]->at < gw->heap[m]->at) m = l;
		if (r < gw->nheap && gw->heap[r]->at < gw->heap[m]->at) m = r;
		if (m == i) return;
		lg_timer_swap(gw, i, m);
		i = m;
	}
}

static void lg_timer_clear(struct llmgw *gw, struct lg_timer *t)
{
	int i = t->hidx;
	if (i < 0) return;
	t->hidx = -1;
	if (i != --gw->nheap) {
		gw->heap[i] = gw->heap[gw->nheap];
		gw->heap[i]->hidx = i;
		lg_timer_down(gw, i);
		lg_timer_up(gw, i);
	}
}

/* Arms t to fire at now + ms (replacing an earlier deadline). */
static int lg_timer_set(struct llmgw *gw, struct lg_timer *t, int64_t ms)
{
	int64_t at = gw->now + ms;
	if (t->hidx >= 0) {
		t->at = at;
		lg_timer_down(gw, t->hidx);
		lg_timer_up(gw, t->hidx);
		return 0;
	}
	if (gw->nheap == gw->capheap) {
		int cap = gw->capheap ? gw->capheap * 2 : 64;
		struct lg_timer **nh = (struct lg_timer **)realloc(gw->heap, (size_t)cap * sizeof *nh);
		if (!nh) return -1;
		gw->heap = nh;
		gw->capheap = cap;
	}
	t->at = at;
	t->hidx = gw->nheap;
	gw->heap[gw->nheap++] = t;
	lg_timer_up(gw, t->hidx);
	return 0;
}

static void lg_conn_events(struct lg_conn *c);

/* Adds a socket to the poll set. The connection starts with no buffers. */
static struct lg_conn *lg_conn_new(struct llmgw *gw, int fd, int role,
                                   void (*on_io)(struct lg_conn *, int))
{
	struct lg_conn *c;
	if (gw->npfd == gw->cappfd) {
		int cap = gw->cappfd * 2;
		struct pollfd *np = (struct pollfd *)realloc(gw->pfd, (size_t)cap * sizeof *np);
		struct lg_conn **nc;
		if (!np) return NULL;
		gw->pfd = np;
		nc = (struct lg_conn **)realloc(gw->conns, (size_t)cap * sizeof *nc);
		if (!nc) return NULL;
		gw->conns = nc;
		gw->cappfd = cap;
	}
	c = (struct lg_conn *)calloc(1, sizeof *c);
	if (!c) return NULL;
	c->gw = gw;
	c->fd = fd;
	c->role = role;
	c->on_io = on_io;
	c->tm.hidx = -1;
	c->idx = gw->npfd++;
	gw->conns[c->idx] = c;
	gw->pfd[c->idx].fd = fd;
	gw->pfd[c->idx].events = POLLIN;
	gw->pfd[c->idx].revents = 0;
	if (role == LG_ROLE_CLIENT) {
		lg_gauge_add(&gw->nclients, 1);
		if (gw->sh) lg_atomic_add(&gw->sh->nclients, 1);
	} else if (role == LG_ROLE_UPSTREAM) {
		lg_gauge_add(&gw->nupstream, 1);
	}
	return c;
}

/* Marks a connection for reaping at the end of the iteration; it stops
 * being polled at once. Errors never unwind through the loop. */
static void lg_conn_close(struct lg_conn *c)
{
	if (c->flags & LG_F_DEAD) return;
	c->flags |= LG_F_DEAD;
	c->gw->pfd[c->idx].events = 0;
	lg_timer_clear(c->gw, &c->tm);
}

static void lg_conn_free(struct llmgw *gw, struct lg_conn *c)
{
	int last = gw->npfd - 1;
	lg_timer_clear(gw, &c->tm);
	if (c->fd >= 0) close(c->fd);
	if (c->flags & LG_F_PENDING) gw->npending--;
	if (c->tls) lg_tls_free(c->tls);
	lg_cfg_unref(c->tlscfg);
	lg_blk_give(gw, &c->in);
	lg_blk_give(gw, &c->out);
	lg_buf_free(&c->in);
	lg_buf_free(&c->out);
	if (c->role == LG_ROLE_CLIENT) {
		lg_gauge_add(&gw->nclients, -1);
		if (gw->sh) lg_atomic_add(&gw->sh->nclients, -1);
	} else if (c->role == LG_ROLE_UPSTREAM) {
		lg_gauge_add(&gw->nupstream, -1);
	}
	if (c->idx != last) { /* swap-remove: the poll set stays dense */
		gw->pfd[c->idx] = gw->pfd[last];
		gw->conns[c->idx] = gw->conns[last];
		gw->conns[c->idx]->idx = c->idx;
	}
	gw->npfd--;
	free(c);
}

/* What to poll for: input while there is room and nobody asked us to stop
 * reading; output only while there is something to send or a connect is
 * pending. */
static void lg_conn_events(struct lg_conn *c)
{
	short ev = 0;
	if (c->flags & LG_F_DEAD) return;
	if (c->tls) { /* the engine says what it waits for; input only when wanted */
		short te = lg_tls_events(c->tls);
		if ((te & POLLIN) && (!(c->flags & (LG_F_NOREAD | LG_F_EOF)) || lg_tls_handshaking(c->tls)))
			ev |= POLLIN;
		ev |= (short)(te & POLLOUT);
	} else {
		if (!(c->flags & (LG_F_NOREAD | LG_F_EOF | LG_F_CONNECTING))) ev |= POLLIN;
		if (lg_buf_used(&c->out) || (c->flags & LG_F_CONNECTING)) ev |= POLLOUT;
	}
	c->gw->pfd[c->idx].events = ev;
}

/* Reads what the socket has into c->in, at most max bytes of buffer in
 * all (0 = no growth beyond the current capacity). Returns bytes read, 0 on
 * EOF, -1 on error (errno), -2 when nothing is there yet or no room. */
static long lg_io_read(struct lg_conn *c, size_t max)
{
	size_t room;
	ssize_t n;
	if (max) { /* start at LLMGW_IO_BUF, double only when nearly full, never past max */
		size_t used = lg_buf_used(&c->in), left = max > used ? max - used : 0;
		size_t want = LG_MIN(left, LG_MAX((size_t)LLMGW_IO_BUF, used));
		if (left == 0) return -2;
		if (c->in.cap == 0 && left >= LLMGW_IO_BUF) lg_blk_take(c->gw, &c->in);
		if (c->in.cap - c->in.len < 1024 && lg_buf_reserve(&c->in, want)) {
			c->in.err = 0;
			if (c->in.cap == c->in.len) return -2;
		}
		if (c->in.cap == 0 && lg_buf_reserve(&c->in, LG_MIN(left, (size_t)LLMGW_IO_BUF))) return -2;
	}
	room = c->in.cap - c->in.len;
	if (room == 0) return -2;
	if (c->tls) { /* decrypt as much as fits; what does not stays pending */
		long got = 0, k = -2;
		while (room && (k = lg_tls_recv(c->tls, c->fd, c->in.p + c->in.len, room)) > 0) {
			c->in.len += (size_t)k;
			room -= (size_t)k;
			got += k;
		}
		if (!(c->flags & LG_F_PENDING) != !lg_tls_pending(c->tls)) {
			c->flags ^= LG_F_PENDING;
			c->gw->npending += (c->flags & LG_F_PENDING) ? 1 : -1;
		}
		if (got) return got;
		if (k == 0) c->flags |= LG_F_EOF;
		if (k == -1) errno = EPROTO;
		return k;
	}
	n = recv(c->fd, c->in.p + c->in.len, room, 0);
	if (n > 0) {
		c->in.len += (size_t)n;
		return (long)n;
	}
	if (n == 0) {
		c->flags |= LG_F_EOF;
		return 0;
	}
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return -2;
	return -1;
}

/* Sends as much of c->out as the socket takes. 0 when all or part went
 * (POLLOUT set for the rest), -1 on error. */
/* Like send() through TLS when there is TLS: bytes taken, -2 for later,
 * -1 on error. */
static long lg_io_write(struct lg_conn *c, const char *p, size_t n)
{
	ssize_t k;
	if (c->tls) return lg_tls_send(c->tls, c->fd, p, n);
	do
		k = send(c->fd, p, n, MSG_NOSIGNAL);
	while (k < 0 && errno == EINTR);
	if (k >= 0) return (long)k;
	return errno == EAGAIN || errno == EWOULDBLOCK ? -2 : -1;
}

static int lg_conn_flush(struct lg_conn *c)
{
	if (c->tls) {
		while (lg_buf_used(&c->out)) {
			long k = lg_tls_send(c->tls, c->fd, lg_buf_data(&c->out), lg_buf_used(&c->out));
			if (k == -1) return -1;
			if (k == -2) break;
			lg_buf_consume(&c->out, (size_t)k);
		}
		if (!lg_buf_used(&c->out) && lg_tls_send(c->tls, c->fd, "", 0) == -1) return -1;
		lg_conn_events(c);
		return 0;
	}
	while (lg_buf_used(&c->out)) {
		ssize_t n = send(c->fd, lg_buf_data(&c->out), lg_buf_used(&c->out), MSG_NOSIGNAL);
		if (n > 0) {
			lg_buf_consume(&c->out, (size_t)n);
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
		if (n < 0 && errno == EINTR) continue;
		return -1;
	}
	lg_conn_events(c);
	return 0;
}

static void lg_loop_wake(struct llmgw *gw)
{
	char b = 1;
	if (gw->wake[1] >= 0 && write(gw->wake[1], &b, 1) < 0) { /* full pipe: already awake */
	}
}

/* --- the loop: one iteration of poll, timers, reloads and the drain ----- */

/* the parts of an iteration that later sections own */
static void lg_srv_adopt(struct llmgw *gw);                          /* 14 */
static void lg_srv_accept(struct llmgw *gw, int fd, int tls);         /* 14 */
static int lg_srv_reload(struct llmgw *gw, char *err, size_t errlen); /* 14 */
static void lg_srv_drop(struct lg_conn *c);                           /* 14 */
static void lg_req_dns_wake(struct llmgw *gw);                        /* 11a */
static void lg_req_reap(struct llmgw *gw);                            /* 11a */
static void lg_acct_flush(struct llmgw *gw);                          /* 13 */
static void lg_redis_tick(struct llmgw *gw);                          /* 13g */
static void lg_listen_stop(struct llmgw *gw);                         /* 15 */

int llmgw_poll(struct llmgw *gw, int timeout_ms)
{
	int i, n, wait = timeout_ms, count;
	if (!gw->running) return 0;
	gw->now = lg_now_ms();
	if (gw->sh && (unsigned long)lg_atomic_get(&gw->sh->cfg_gen) != gw->cfg->gen) lg_srv_adopt(gw);
	lg_redis_tick(gw);
	if (gw->nheap) {
		int64_t d = gw->heap[0]->at - gw->now;
		if (d < 0) d = 0;
		if (wait < 0 || d < wait) wait = (int)LG_MIN(d, (int64_t)INT_MAX);
	}
	if (gw->stopping && (wait < 0 || wait > 100)) wait = 100;
	if (gw->npending) wait = 0; /* decrypted bytes wait: no sleeping */
	n = poll(gw->pfd, (nfds_t)gw->npfd, wait);
	gw->now = lg_now_ms();
	if (gw->npending) {
		for (i = gw->nfixed; i < gw->npfd; i++)
			if ((gw->conns[i]->flags & (LG_F_PENDING | LG_F_NOREAD)) == LG_F_PENDING) {
				gw->pfd[i].revents |= POLLIN;
				n = n > 0 ? n : 1;
			}
	}
	if (n > 0) {
		if (gw->pfd[0].revents) {
			char buf[256];
			while (read(gw->wake[0], buf, sizeof buf) > 0) {
			}
			lg_req_dns_wake(gw); /* DNS answers may have come */
		}
		for (i = 1; i < gw->nfixed; i++)
			if (gw->pfd[i].fd >= 0 && (gw->pfd[i].revents & POLLIN))
				lg_srv_accept(gw, gw->pfd[i].fd, gw->listen_tls[i - 1]);
		count = gw->npfd;
		for (i = gw->nfixed; i < count; i++) {
			struct lg_conn *c = gw->conns[i];
			int re = gw->pfd[i].revents;
			gw->pfd[i].revents = 0;
			if (!re || (c->flags & LG_F_DEAD)) continue;
			c->on_io(c, re);
		}
	}
	if (lg_flag_get(&gw->stop_req) && !gw->stopping) lg_listen_stop(gw);
	if (lg_flag_get(&gw->reload_req)) {
		char err[1024];
		lg_flag_clear(&gw->reload_req);
		lg_srv_reload(gw, err, sizeof err);
	}
	while (gw->nheap && gw->heap[0]->at <= gw->now) {
		struct lg_timer *t = gw->heap[0];
		lg_timer_clear(gw, t);
		t->fn(gw, t);
	}
	if (gw->stopping && gw->now >= gw->stop_deadline) {
		for (i = gw->nfixed; i < gw->npfd; i++) /* bounded drain: what is left is cut */
			if (gw->conns[i]->role == LG_ROLE_CLIENT && !(gw->conns[i]->flags & LG_F_DEAD))
				lg_srv_drop(gw->conns[i]);
	}
	for (i = gw->nfixed; i < gw->npfd;) {
		if (gw->conns[i]->flags & LG_F_DEAD)
			lg_conn_free(gw, gw->conns[i]); /* swaps the last one into i */
		else
			i++;
	}
	lg_req_reap(gw);
	lg_redis_tick(gw); /* the store's calls of this iteration, in one write */
	lg_acct_flush(gw);
	if (gw->stopping && gw->nclients == 0 && gw->nreqs == 0 && !gw->nstore) { /* settles reach the store */
		gw->running = 0;
		if (!gw->sh) LG_LOG(gw, LG_LOG_INFO, "stopped after %llu requests", gw->served);
	}
	return gw->running;
}


/* ===== 9. DNS ========================================================== */

/* Host names are resolved by one helper thread per gateway so getaddrinfo
 * never stalls the loop; answers are cached for LLMGW_DNS_TTL_MS and the
 * thread wakes the loop through the self-pipe. Numeric addresses never
 * reach the thread. */
enum { LG_DNS_PENDING, LG_DNS_BUSY, LG_DNS_OK, LG_DNS_FAIL };

#define LG_DNS_ADDRS 4 /* addresses kept per name: a connect that fails tries the next */

struct lg_dns_ent {
	struct lg_dns_ent *next;
	char host[256];
	int port, state, gai_err;
	struct sockaddr_storage addr[LG_DNS_ADDRS];
	socklen_t alen[LG_DNS_ADDRS];
	int naddr, pref; /* pref: the address the last good connect used */
	int64_t expires; /* monotonic ms */
};

struct lg_dns {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t th;
	int started, quit, wakefd;
	struct lg_dns_ent *ents; /* guarded by mu */
};

static LG_COLD void *lg_dns_thread(void *arg)
{
	struct lg_dns *d = (struct lg_dns *)arg;
	pthread_mutex_lock(&d->mu);
	while (!d->quit) {
		struct lg_dns_ent *e;
		char host[256], port[8];
		struct addrinfo hints, *res = NULL;
		int r;
		for (e = d->ents; e && e->state != LG_DNS_PENDING; e = e->next) {
		}
		if (!e) {
			pthread_cond_wait(&d->cv, &d->mu);
			continue;
		}
		e->state = LG_DNS_BUSY;
		memcpy(host, e->host, sizeof host);
		snprintf(port, sizeof port, "%d", e->port);
		pthread_mutex_unlock(&d->mu);
		memset(&hints, 0, sizeof hints);
		hints.ai_family = AF_UNSPEC;
		hints.ai_socktype = SOCK_STREAM;
		r = getaddrinfo(host, port, &hints, &res);
		pthread_mutex_lock(&d->mu);
		if (r == 0 && res) {
			/* the resolver's order (RFC 6724), except that the first address
			 * of the other family comes second: a host with a broken IPv6
			 * route reaches IPv4 after one failed connect */
			struct addrinfo *ai, *other = NULL, *ord[LG_DNS_ADDRS];
			int k = 0, q;
			for (ai = res->ai_next; ai && !other; ai = ai->ai_next)
				if (ai->ai_family != res->ai_family) other = ai;
			ord[k++] = res;
			if (other) ord[k++] = other;
			for (ai = res->ai_next; ai && k < LG_DNS_ADDRS; ai = ai->ai_next)
				if (ai != other) ord[k++] = ai;
			e->naddr = 0;
			e->pref = 0;
			for (q = 0; q < k; q++) {
				if (ord[q]->ai_addrlen > sizeof e->addr[0]) continue;
				memcpy(&e->addr[e->naddr], ord[q]->ai_addr, ord[q]->ai_addrlen);
				e->alen[e->naddr++] = (socklen_t)ord[q]->ai_addrlen;
			}
			e->state = e->naddr ? LG_DNS_OK : LG_DNS_FAIL;
			e->gai_err = EAI_NONAME;
			e->expires = lg_now_ms() + LLMGW_DNS_TTL_MS;
		} else {
			e->gai_err = r ? r : EAI_NONAME;
			e->state = LG_DNS_FAIL;
			e->expires = lg_now_ms() + 5000; /* negative answers are kept briefly */
		}
		if (res) freeaddrinfo(res);
		{
			char b = 1;
			if (write(d->wakefd, &b, 1) < 0) { /* the loop is awake anyway */
			}
		}
	}
	pthread_mutex_unlock(&d->mu);
	return NULL;
}

static void lg_dns_free(struct lg_dns *d)
{
	if (!d) return;
	if (d->started) {
		pthread_mutex_lock(&d->mu);
		d->quit = 1;
		pthread_cond_signal(&d->cv);
		pthread_mutex_unlock(&d->mu);
		pthread_join(d->th, NULL);
	}
	while (d->ents) {
		struct lg_dns_ent *n = d->ents->next;
		free(d->ents);
		d->ents = n;
	}
	pthread_mutex_destroy(&d->mu);
	pthread_cond_destroy(&d->cv);
	free(d);
}

/* Resolves host:port. Returns how many addresses the name has (>= 1) and
 * sets *addr to its address number want (modulo their count), or to the
 * preferred one when want < 0; *which: the number taken. 0: pending (the
 * loop is woken when the answer comes; ask again); -1: failed, *why says
 * why. */
static int lg_dns_lookup(struct llmgw *gw, const char *host, int port, int want,
                         struct sockaddr_storage *addr, socklen_t *alen, int *which, const char **why)
{
	struct lg_dns *d;
	struct lg_dns_ent *e;
	int r = 0;
	memset(addr, 0, sizeof *addr);
	*which = 0;
	{
		struct sockaddr_in *a4 = (struct sockaddr_in *)addr;
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)addr;
		if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
			a4->sin_family = AF_INET;
			a4->sin_port = htons((uint16_t)port);
			*alen = sizeof *a4;
			return 1;
		}
		if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
			a6->sin6_family = AF_INET6;
			a6->sin6_port = htons((uint16_t)port);
			*alen = sizeof *a6;
			return 1;
		}
	}
	if (!gw->dns) {
		d = (struct lg_dns *)calloc(1, sizeof *d);
		if (!d) {
			*why = "out of memory";
			return -1;
		}
		pthread_mutex_init(&d->mu, NULL);
		pthread_cond_init(&d->cv, NULL);
		d->wakefd = gw->wake[1];
		gw->dns = d;
	}
	d = gw->dns;
	if (!d->started) {
		pthread_attr_t at;
		int ok;
		/* getaddrinfo needs little stack; the default (8 MB of address
		 * space) would not fit a small router's memory limit */
		sigset_t all, old;
		pthread_attr_init(&at);
		pthread_attr_setstacksize(&at, 256u << 10);
		sigfillset(&all); /* signals stay with the loop's thread */
		pthread_sigmask(SIG_BLOCK, &all, &old);
		ok = pthread_create(&d->th, &at, lg_dns_thread, d) == 0;
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		pthread_attr_destroy(&at);
		if (!ok) {
			*why = "cannot start the resolver thread";
			return -1;
		}
		d->started = 1;
	}
	pthread_mutex_lock(&d->mu);
	for (e = d->ents; e; e = e->next)
		if (e->port == port && strcmp(e->host, host) == 0) break;
	if (!e) {
		e = (struct lg_dns_ent *)calloc(1, sizeof *e);
		if (!e) {
			pthread_mutex_unlock(&d->mu);
			*why = "out of memory";
			return -1;
		}
		snprintf(e->host, sizeof e->host, "%s", host);
		e->port = port;
		e->state = LG_DNS_PENDING;
		e->next = d->ents;
		d->ents = e;
		pthread_cond_signal(&d->cv);
	} else if ((e->state == LG_DNS_OK || e->state == LG_DNS_FAIL) && lg_now_ms() > e->expires) {
		e->state = LG_DNS_PENDING;
		pthread_cond_signal(&d->cv);
	}
	if (e->state == LG_DNS_OK) {
		*which = (want < 0 ? e->pref : want) % e->naddr;
		memcpy(addr, &e->addr[*which], sizeof *addr);
		*alen = e->alen[*which];
		r = e->naddr;
	} else if (e->state == LG_DNS_FAIL) {
		*why = gai_strerror(e->gai_err);
		r = -1;
	}
	pthread_mutex_unlock(&d->mu);
	return r;
}

/* A connect to address number which of host:port worked: the next lookups
 * start there. */
static void lg_dns_prefer(struct llmgw *gw, const char *host, int port, int which)
{
	struct lg_dns_ent *e;
	if (!gw->dns) return;
	pthread_mutex_lock(&gw->dns->mu);
	for (e = gw->dns->ents; e; e = e->next)
		if (e->port == port && e->state == LG_DNS_OK && which < e->naddr && strcmp(e->host, host) == 0)
			e->pref = which;
	pthread_mutex_unlock(&gw->dns->mu);
}

/* ===== 10. HTTP client and pool ======================================== */

/* One upstream HTTP exchange. It owns the request bytes (kept so a stale
 * pooled connection can be replaced and the request sent again), a
 * connection while it runs, and the framing state of the response; it
 * reports to its owner through callbacks. Callbacks may release the
 * exchange; every path returns right after calling one. */
enum { LG_U_IDLE, LG_U_DNS, LG_U_CONNECT, LG_U_PROXY, LG_U_SEND, LG_U_HEAD, LG_U_BODY, LG_U_DONE };
enum { LG_B_NONE, LG_B_CLEN, LG_B_CHUNKED, LG_B_CLOSE };
enum { LG_UF_CONNECT, LG_UF_TIMEOUT, LG_UF_RESET, LG_UF_PROTO, LG_UF_DNS, LG_UF_TLS };
enum { LG_TK_CONNECT, LG_TK_FIRST, LG_TK_IDLE };

struct lg_upreq {
	struct llmgw *gw;
	const struct lg_cfg *cfg; /* trust anchors, proxy */
	struct lg_conn *c;
	int state, port, tls, mode, keep, status, stale_retry, use_proxy;
	const char *host;      /* owned by the config snapshot the owner holds */
	const char *origin;
	struct lg_buf req;     /* request bytes */
	size_t sent;
	int64_t connect_ms, first_byte_ms, idle_ms;
	int64_t left;          /* Content-Length bytes still to come */
	int tmk;               /* which deadline tm holds: LG_TK_* */
	struct lg_chunked ck;
	struct lg_timer tm;
	int got_bytes;         /* a response byte arrived */
	/* a name's addresses: the connect tries number addr_base + addr_i (the
	 * preferred one first), all of them within connect_ms from conn_end */
	int addr_i, naddr, addr_base, addr_which;
	int64_t conn_end;
	int ending;            /* on_data has the body's last bytes: on_end follows */
	void *owner;
	void (*on_head)(void *owner, const struct lg_http *h);
	void (*on_data)(void *owner, const char *p, size_t n);
	void (*on_end)(void *owner);
	void (*on_fail)(void *owner, int kind, const char *reason);
};

static void lg_up_io(struct lg_conn *c, int revents);

static struct lg_origin *lg_origin_of(struct llmgw *gw, const char *name, int create)
{
	uint32_t h = 2166136261u;
	const unsigned char *q;
	struct lg_origin *o;
	for (q = (const unsigned char *)name; *q; q++) h = (h ^ *q) * 16777619u;
	for (o = gw->orig[h % LG_ORIG_BUCKETS]; o; o = o->next)
		if (strcmp(o->name, name) == 0) return o;
	if (!create || !(o = (struct lg_origin *)calloc(1, sizeof *o))) return NULL;
	lg_cpy(o->name, sizeof o->name, name);
	o->next = gw->orig[h % LG_ORIG_BUCKETS];
	gw->orig[h % LG_ORIG_BUCKETS] = o;
	return o;
}

static LG_INLINE void lg_up_pool_remove(struct llmgw *gw, struct lg_conn *c)
{
	if ((c->flags & LG_F_POOLED) && c->org) {
		if (c->pool_prev)
			c->pool_prev->pool_next = c->pool_next;
		else
			c->org->idle = c->pool_next;
		if (c->pool_next) c->pool_next->pool_prev = c->pool_prev;
		c->org->nidle--;
		lg_gauge_add(&gw->npool, -1);
	}
	c->pool_next = c->pool_prev = NULL;
	c->flags &= ~(unsigned)LG_F_POOLED;
}

static void lg_up_pooled_io(struct lg_conn *c, int revents)
{
	/* idle connections are not polled (lg_up_pool_put); one lands here
	 * when its TLS engine holds bytes nobody asked for: it is done */
	LG_UNUSED(revents);
	lg_up_pool_remove(c->gw, c);
	lg_conn_close(c);
}

static void lg_up_pool_expire(struct llmgw *gw, struct lg_timer *t)
{
	struct lg_conn *c = (struct lg_conn *)(void *)((char *)t - offsetof(struct lg_conn, tm));
	lg_up_pool_remove(gw, c);
	lg_conn_close(c);
}

/* An upstream connection with nothing buffered reads into the loop's
 * LG_RDBUF buffer, lent to it for one lg_up_io call: a reply of a few KB
 * (a whole stream, often) arrives in one recv and an idle stream holds no
 * input buffer. Whatever the call leaves unconsumed - a partial line,
 * event or head - moves into a buffer of the connection's own. */
static void lg_rd_lend(struct lg_conn *c)
{
	struct llmgw *gw = c->gw;
	if (gw->rd_to || lg_buf_used(&c->in)) return;
	if (gw->rd.cap == 0 && lg_buf_reserve(&gw->rd, LG_RDBUF)) {
		lg_buf_free(&gw->rd);
		return;
	}
	lg_blk_give(gw, &c->in);
	gw->rd.max = c->in.max;
	c->in = gw->rd;
	c->in.off = c->in.len = 0;
	gw->rd_to = c;
}

static void lg_rd_back(struct lg_conn *c)
{
	struct llmgw *gw = c->gw;
	struct lg_buf b = c->in;
	if (gw->rd_to != c) return;
	gw->rd_to = NULL;
	lg_buf_init(&c->in, b.max);
	if (lg_buf_used(&b)) {
		lg_blk_take(gw, &c->in);
		lg_buf_add(&c->in, lg_buf_data(&b), lg_buf_used(&b));
	}
	gw->rd = b;
	gw->rd.max = 0;
	gw->rd.err = 0;
}

static void lg_up_pool_put(struct llmgw *gw, struct lg_conn *c)
{
	struct lg_origin *o = c->org ? c->org : (c->org = lg_origin_of(gw, c->origin, 1));
	if (!o || o->nidle >= LLMGW_POOL_MAX_IDLE || gw->stopping) {
		lg_conn_close(c);
		return;
	}
	c->req = NULL;
	c->flags = (c->flags & ~(unsigned)(LG_F_NOREAD | LG_F_REUSED)) | LG_F_POOLED;
	c->on_io = lg_up_pooled_io;
	c->idle_since = gw->now;
	lg_rd_back(c);
	lg_blk_give(gw, &c->in);
	lg_buf_free(&c->in);
	c->pool_prev = NULL;
	c->pool_next = o->idle;
	if (o->idle) o->idle->pool_prev = c;
	o->idle = c;
	o->nidle++;
	lg_gauge_add(&gw->npool, 1);
	c->tm.fn = lg_up_pool_expire;
	lg_timer_set(gw, &c->tm, LLMGW_POOL_IDLE_MS);
	/* out of the poll set (a negative fd is skipped): with 50 idle
	 * connections in it, every poll() of a quiet loop cost ~10 us more */
	gw->pfd[c->idx].events = 0;
	gw->pfd[c->idx].fd = -1;
}

/* The most recently pooled connection to origin. One idle for longer than
 * LG_POOL_CHECK_MS is first asked whether the server closed it (a peek);
 * a younger one is trusted, and a send into a connection the server has
 * just closed is retried on a new one (stale_retry in lg_up_io). */
static struct lg_conn *lg_up_pool_take(struct llmgw *gw, const char *origin)
{
	struct lg_origin *o = lg_origin_of(gw, origin, 0);
	struct lg_conn *c;
	while ((c = o ? o->idle : NULL) != NULL) {
		char b;
		lg_up_pool_remove(gw, c);
		lg_timer_clear(gw, &c->tm);
		gw->pfd[c->idx].fd = c->fd;
		if (gw->now - c->idle_since > LG_POOL_CHECK_MS &&
		    (recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) >= 0 ||
		     (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))) {
			lg_conn_close(c); /* closed (0), unasked bytes (> 0) or an error */
			continue;
		}
		c->flags |= LG_F_REUSED;
		c->on_io = lg_up_io;
		return c;
	}
	return NULL;
}

static void lg_up_timeout(struct llmgw *gw, struct lg_timer *t);

static void lg_up_events(struct lg_upreq *u)
{
	struct lg_conn *c = u->c;
	short ev = 0;
	if (!c || (c->flags & LG_F_DEAD)) return;
	if (c->tls && u->state >= LG_U_SEND) {
		short te = lg_tls_events(c->tls);
		if ((te & POLLIN) && (lg_tls_handshaking(c->tls) ||
		                      (u->state >= LG_U_HEAD && !(c->flags & (LG_F_NOREAD | LG_F_EOF)))))
			ev |= POLLIN;
		ev |= (short)(te & POLLOUT);
		if (u->state == LG_U_SEND && u->sent < lg_buf_used(&u->req) && !lg_tls_handshaking(c->tls))
			ev |= POLLOUT;
	} else {
		if (u->state == LG_U_CONNECT || (u->state == LG_U_SEND && u->sent < lg_buf_used(&u->req)) ||
		    (u->state == LG_U_PROXY && lg_buf_used(&c->out)))
			ev |= POLLOUT;
		if (u->state != LG_U_CONNECT && !(c->flags & (LG_F_NOREAD | LG_F_EOF))) ev |= POLLIN;
	}
	u->gw->pfd[c->idx].events = ev;
}

/* Lets go of the connection: back to the pool when the response was read
 * to its end and both sides allow reuse, closed otherwise. */
static void lg_up_release(struct lg_upreq *u)
{
	struct lg_conn *c = u->c;
	lg_timer_clear(u->gw, &u->tm);
	if (c) {
		c->req = NULL;
		if (u->state == LG_U_DONE && u->keep && !(c->flags & (LG_F_EOF | LG_F_DEAD)) &&
		    lg_buf_used(&c->in) == 0)
			lg_up_pool_put(u->gw, c);
		else
			lg_conn_close(c);
	}
	u->c = NULL;
	u->state = LG_U_IDLE;
}

static LG_COLD void lg_up_fail(struct lg_upreq *u, int kind, const char *reason)
{
	if (u->c) u->c->flags &= ~(unsigned)LG_F_KEEP;
	u->keep = 0;
	lg_up_release(u);
	u->on_fail(u->owner, kind, reason);
}

#if LLMGW_TLS
/* TLS session resumption: one saved session per upstream origin. */
static br_ssl_session_parameters *lg_up_sess_find(struct lg_upreq *u)
{
	size_t i;
	for (i = 0; i < LG_COUNTOF(u->gw->sess); i++)
		if (u->gw->sess[i].origin[0] && strcmp(u->gw->sess[i].origin, u->origin) == 0) {
			u->gw->sess[i].used = u->gw->now;
			return &u->gw->sess[i].p;
		}
	return NULL;
}

static void lg_up_sess_save(struct lg_upreq *u)
{
	size_t i, slot = 0;
	struct llmgw *gw = u->gw;
	for (i = 0; i < LG_COUNTOF(gw->sess); i++) {
		if (strcmp(gw->sess[i].origin, u->origin) == 0) {
			slot = i;
			break;
		}
		if (gw->sess[i].used < gw->sess[slot].used) slot = i;
	}
	snprintf(gw->sess[slot].origin, sizeof gw->sess[slot].origin, "%s", u->origin);
	br_ssl_engine_get_session_parameters(u->c->tls->eng, &gw->sess[slot].p);
	gw->sess[slot].used = gw->now;
}
#endif

static void lg_up_connect(struct lg_upreq *u);

/* The socket is connected (or came from the pool): send the request. */
static void lg_up_send(struct lg_upreq *u)
{
	struct lg_conn *c = u->c;
	while (u->sent < lg_buf_used(&u->req)) {
		long n = lg_io_write(c, lg_buf_data(&u->req) + u->sent, lg_buf_used(&u->req) - u->sent);
		if (n > 0) {
			u->sent += (size_t)n;
			continue;
		}
		if (n == -2 || n == 0) break;
		if ((c->flags & LG_F_REUSED) && !u->stale_retry) { /* stale pooled connection */
			u->stale_retry = 1;
			lg_conn_close(c);
			u->c = NULL;
			lg_up_connect(u);
			return;
		}
		if (c->tls) {
			char why[300];
#if LLMGW_TLS
			lg_tls_why(c->tls, u->host, why, sizeof why);
#else
			snprintf(why, sizeof why, "TLS is not compiled in");
#endif
			lg_up_fail(u, LG_UF_TLS, why);
			return;
		}
		lg_up_fail(u, LG_UF_RESET, strerror(errno));
		return;
	}
	if (u->sent == lg_buf_used(&u->req)) {
#if LLMGW_TLS
		if (c->tls) lg_up_sess_save(u);
#endif
		u->state = LG_U_HEAD;
		u->tmk = LG_TK_FIRST;
		lg_timer_set(u->gw, &u->tm, u->first_byte_ms);
	}
	lg_up_events(u);
}

static void lg_up_connected(struct lg_upreq *u)
{
	struct lg_conn *c = u->c;
	if (u->tls && !c->tls) {
#if LLMGW_TLS
		if (u->use_proxy && u->state != LG_U_PROXY) { /* open the tunnel first */
			lg_buf_printf(&c->out, "CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n", u->host, u->port, u->host,
			              u->port);
			if (u->cfg->proxy_auth) lg_buf_printf(&c->out, "Proxy-Authorization: Basic %s\r\n", u->cfg->proxy_auth);
			lg_buf_addz(&c->out, "\r\n");
			u->state = LG_U_PROXY;
			if (lg_conn_flush(c) < 0) {
				lg_up_fail(u, LG_UF_CONNECT, "cannot write to the proxy");
				return;
			}
			lg_up_events(u);
			return;
		}
		c->tls = lg_tls_client_new(u->cfg, u->host, lg_up_sess_find(u));
#endif
		if (!c->tls) {
			lg_up_fail(u, LG_UF_TLS, "cannot set up TLS");
			return;
		}
	}
	u->state = LG_U_SEND;
	u->sent = 0;
	lg_up_send(u);
}

/* The proxy's answer to CONNECT: 200 opens the tunnel. */
static LG_COLD void lg_up_proxy_reply(struct lg_upreq *u)
{
	struct lg_conn *c = u->c;
	struct lg_http h;
	int r = lg_http_parse_resp(lg_buf_data(&c->in), lg_buf_used(&c->in), &h);
	char msg[200];
	if (r == LG_HTTP_PARTIAL && !(c->flags & LG_F_EOF) && lg_buf_used(&c->in) < 16384) return;
	if (r < 0 || h.status != 200) {
		if (r < 0)
			snprintf(msg, sizeof msg, "proxy %s:%d did not answer CONNECT properly", u->cfg->proxy_host,
			         u->cfg->proxy_port);
		else
			snprintf(msg, sizeof msg, "proxy %s:%d refused CONNECT to %s:%d (status %d)",
			         u->cfg->proxy_host, u->cfg->proxy_port, u->host, u->port, h.status);
		lg_up_fail(u, LG_UF_CONNECT, msg);
		return;
	}
	lg_buf_consume(&c->in, (size_t)r);
	lg_up_connected(u); /* state is LG_U_PROXY: TLS starts now */
}

/* A connect that failed or timed out moves on to the name's next address,
 * if it has one; 1 when it did. */
static int lg_up_next_addr(struct lg_upreq *u)
{
	if (u->addr_i + 1 >= u->naddr) return 0;
	if (u->c) {
		u->c->req = NULL;
		lg_conn_close(u->c);
		u->c = NULL;
	}
	u->addr_i++;
	lg_up_connect(u);
	return 1;
}

/* A connect (or its socket) failed with err: the name's next address, or
 * the attempt fails saying where and why. */
static LG_COLD void lg_up_connect_failed(struct lg_upreq *u, int err)
{
	char msg[200];
	int n;
	if (lg_up_next_addr(u)) return;
	n = snprintf(msg, sizeof msg, "connect to %s%s:%d failed: %s", u->use_proxy ? "proxy " : "",
	             u->use_proxy ? u->cfg->proxy_host : u->host, u->use_proxy ? u->cfg->proxy_port : u->port,
	             strerror(err));
	if (u->naddr > 1 && n > 0 && (size_t)n < sizeof msg)
		snprintf(msg + n, sizeof msg - (size_t)n, " (the last of its %d addresses)", u->naddr);
	lg_up_fail(u, LG_UF_CONNECT, msg);
}

/* The TCP connection is up: a name's address that worked after another
 * failed is the one the next connects try first, and a TLS handshake has
 * what is left of connect_timeout, not just this address's share. */
static void lg_up_tcp_up(struct lg_upreq *u)
{
	if (u->addr_i)
		lg_dns_prefer(u->gw, u->use_proxy ? u->cfg->proxy_host : u->host,
		              u->use_proxy ? u->cfg->proxy_port : u->port, u->addr_which);
	if (u->naddr > 1) lg_timer_set(u->gw, &u->tm, LG_MAX(1, u->conn_end - u->gw->now));
	lg_up_connected(u);
}

/* Opens a new connection (DNS first when the host is a name) to the name's
 * preferred address, or after a failed one to the next (lg_up_next_addr). */
static void lg_up_connect(struct lg_upreq *u)
{
	struct sockaddr_storage sa;
	socklen_t alen = 0;
	const char *why = "";
	int r, fd, one = 1;
	struct lg_conn *c;
	const char *host = u->use_proxy ? u->cfg->proxy_host : u->host;
	int port = u->use_proxy ? u->cfg->proxy_port : u->port;
	r = lg_dns_lookup(u->gw, host, port, u->addr_i ? u->addr_base + u->addr_i : -1, &sa, &alen, &u->addr_which,
	                  &why);
	if (r == 0) {
		if (u->state != LG_U_DNS) {
			u->state = LG_U_DNS;
			u->tmk = LG_TK_CONNECT;
			lg_timer_set(u->gw, &u->tm, u->connect_ms);
		}
		return;
	}
	if (r < 0) {
		char msg[300];
		snprintf(msg, sizeof msg, "cannot resolve %s%s: %s", u->use_proxy ? "the proxy " : "", host, why);
		lg_up_fail(u, LG_UF_DNS, msg);
		return;
	}
	u->naddr = r;
	if (!u->addr_i) { /* the first address: the time for all starts now */
		u->addr_base = u->addr_which;
		u->conn_end = u->gw->now + u->connect_ms;
	}
	fd = socket(sa.ss_family, SOCK_STREAM, 0);
	if (fd < 0 || lg_set_nonblock(fd) < 0) {
		int err = errno; /* e.g. EAFNOSUPPORT: IPv6 turned off in the kernel */
		if (fd >= 0) close(fd);
		lg_up_connect_failed(u, err);
		return;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	c = lg_conn_new(u->gw, fd, LG_ROLE_UPSTREAM, lg_up_io);
	if (!c) {
		close(fd);
		lg_up_fail(u, LG_UF_CONNECT, "out of memory");
		return;
	}
	snprintf(c->origin, sizeof c->origin, "%s", u->origin);
	c->req = (struct lg_req *)u->owner;
	u->c = c;
	u->state = LG_U_CONNECT;
	u->tmk = LG_TK_CONNECT;
	{ /* this address's share of what is left: the rest split among them */
		int64_t left = LG_MAX(1, u->conn_end - u->gw->now);
		lg_timer_set(u->gw, &u->tm, LG_MAX(1, left / (u->naddr - u->addr_i)));
	}
	if (connect(fd, (struct sockaddr *)&sa, alen) == 0) {
		lg_up_tcp_up(u);
		return;
	}
	if (errno != EINPROGRESS) {
		lg_up_connect_failed(u, errno);
		return;
	}
	c->flags |= LG_F_CONNECTING;
	lg_up_events(u);
}

/* NO_PROXY: "*", or comma-separated host names and domain suffixes. */
static int lg_up_no_proxy(const char *list, const char *host)
{
	lg_str l = lg_strz(list), h = lg_strz(host);
	size_t i = 0;
	while (list && i < l.n) {
		size_t st = i;
		lg_str e;
		while (i < l.n && l.p[i] != ',') i++;
		e = lg_str_trim(lg_str_of(l.p + st, i - st));
		i++;
		if (e.n && e.p[0] == '.') e.p++, e.n--;
		if (lg_str_eq(e, "*") || lg_str_ieqs(e, h)) return 1;
		if (e.n && h.n > e.n && h.p[h.n - e.n - 1] == '.' && lg_str_ieqs(lg_str_of(h.p + h.n - e.n, e.n), e))
			return 1;
	}
	return 0;
}

/* Starts the exchange: a pooled connection to the same origin if there is
 * one, a new one otherwise. The request bytes must be in u->req. */
static void lg_up_start(struct lg_upreq *u)
{
	struct lg_conn *c = lg_up_pool_take(u->gw, u->origin);
	u->tm.fn = lg_up_timeout;
	u->use_proxy = u->tls && u->cfg->proxy_host && !lg_up_no_proxy(u->cfg->no_proxy, u->host);
	u->stale_retry = 0;
	u->got_bytes = 0;
	u->addr_i = u->naddr = 0;
	u->keep = 1;
	u->status = 0;
	memset(&u->ck, 0, sizeof u->ck);
	if (c) {
		c->req = (struct lg_req *)u->owner;
		c->uses++;
		u->c = c;
		u->tmk = LG_TK_FIRST;
		lg_timer_set(u->gw, &u->tm, u->first_byte_ms);
		lg_up_connected(u);
		return;
	}
	lg_up_connect(u);
}

/* The resolver answered something: exchanges waiting on DNS ask again. */
static void lg_up_dns_ready(struct lg_upreq *u)
{
	if (u->state == LG_U_DNS) lg_up_connect(u);
}

static LG_COLD void lg_up_timeout(struct llmgw *gw, struct lg_timer *t)
{
	struct lg_upreq *u = (struct lg_upreq *)(void *)((char *)t - offsetof(struct lg_upreq, tm));
	char msg[160];
	LG_UNUSED(gw);
	if (u->state == LG_U_DNS)
		snprintf(msg, sizeof msg, "timed out resolving %s", u->use_proxy ? u->cfg->proxy_host : u->host);
	else if (u->state == LG_U_PROXY)
		snprintf(msg, sizeof msg, "proxy %s:%d did not answer CONNECT within %lld ms (connect_timeout)",
		         u->cfg->proxy_host, u->cfg->proxy_port, (long long)u->connect_ms);
	else if (u->tmk == LG_TK_CONNECT && u->state == LG_U_CONNECT && lg_up_next_addr(u))
		return; /* the name's next address */
	else if (u->tmk == LG_TK_CONNECT)
		snprintf(msg, sizeof msg, "%s to %s:%d timed out after %lld ms (connect_timeout%s)",
		         u->state == LG_U_SEND && u->c && u->c->tls ? "TLS handshake" : "connect", u->host, u->port,
		         (long long)u->connect_ms, u->naddr > 1 ? ", shared by its addresses" : "");
	else if (u->tmk == LG_TK_FIRST)
		snprintf(msg, sizeof msg, "no response within %lld ms (first_byte_timeout)", (long long)u->first_byte_ms);
	else
		snprintf(msg, sizeof msg, "no data for %lld ms (stream_idle_timeout)", (long long)u->idle_ms);
	lg_up_fail(u, LG_UF_TIMEOUT, msg);
}

/* Body bytes in c->in: hands the decoded ones to the owner. */
static void lg_up_body(struct lg_upreq *u)
{
	struct lg_conn *c = u->c;
	char *p = lg_buf_data(&c->in);
	size_t n = lg_buf_used(&c->in);
	long left;
	int end = 0;
	if (n == 0 && !(c->flags & LG_F_EOF) && u->mode != LG_B_NONE) return;
	switch (u->mode) {
	case LG_B_CLEN:
		if ((int64_t)n > u->left) {
			n = (size_t)u->left;
			u->keep = 0; /* bytes past the body: do not trust this connection */
		}
		u->left -= (int64_t)n;
		end = u->left == 0;
		lg_buf_consume(&c->in, lg_buf_used(&c->in));
		break;
	case LG_B_CHUNKED:
		left = lg_chunked_decode(&u->ck, p, &n);
		if (left == LG_HTTP_ERR) {
			lg_up_fail(u, LG_UF_PROTO, "malformed chunked encoding in the response");
			return;
		}
		if (left > 0) u->keep = 0;
		end = left >= 0;
		lg_buf_consume(&c->in, lg_buf_used(&c->in));
		break;
	case LG_B_CLOSE:
		lg_buf_consume(&c->in, n);
		end = (c->flags & LG_F_EOF) != 0;
		u->keep = 0;
		break;
	default:
		n = 0;
		end = 1;
	}
	if (!end && (c->flags & LG_F_EOF)) {
		lg_up_fail(u, LG_UF_RESET, "the upstream closed the connection in the middle of the response");
		return;
	}
	if (n) {
		u->tmk = LG_TK_IDLE;
		lg_timer_set(u->gw, &u->tm, u->idle_ms);
		u->ending = end;
		u->on_data(u->owner, p, n);
		if (u->state != LG_U_BODY) return; /* the owner let go */
	}
	if (end) {
		u->state = LG_U_DONE;
		lg_timer_clear(u->gw, &u->tm);
		u->on_end(u->owner);
	}
}

static void lg_up_head(struct lg_upreq *u)
{
	struct lg_conn *c = u->c;
	struct lg_http h;
	int r;
	for (;;) {
		r = lg_http_parse_resp(lg_buf_data(&c->in), lg_buf_used(&c->in), &h);
		if (r == LG_HTTP_PARTIAL) {
			if (lg_buf_used(&c->in) > 65536) {
				lg_up_fail(u, LG_UF_PROTO, "response head larger than 64 KB");
				return;
			}
			if (c->flags & LG_F_EOF) {
				lg_up_fail(u, LG_UF_RESET, lg_buf_used(&c->in)
				                               ? "the upstream closed the connection inside the response head"
				                               : "the upstream closed the connection without answering");
			}
			return;
		}
		if (r < 0 || lg_http_framing(&h, 0) != 0) {
			lg_up_fail(u, LG_UF_PROTO, r == LG_HTTP_TOOMANY ? "too many response headers"
			                                                  : "malformed response head");
			return;
		}
		if (h.status >= 100 && h.status < 200) { /* 100 Continue and friends */
			lg_buf_consume(&c->in, (size_t)r);
			continue;
		}
		break;
	}
	u->status = h.status;
	u->keep = u->keep && !h.close;
	lg_buf_clear(&u->req); /* answered: the request bytes are not needed again */
	lg_blk_give(u->gw, &u->req);
	if (h.status == 204 || h.status == 304)
		u->mode = LG_B_NONE;
	else if (h.chunked)
		u->mode = LG_B_CHUNKED;
	else if (h.clen >= 0)
		u->mode = LG_B_CLEN, u->left = h.clen;
	else
		u->mode = LG_B_CLOSE;
	if (u->mode == LG_B_CLEN && u->left == 0) u->mode = LG_B_NONE;
	u->state = LG_U_BODY;
	u->tmk = LG_TK_IDLE;
	lg_timer_set(u->gw, &u->tm, u->idle_ms);
	u->on_head(u->owner, &h); /* h views c->in: consumed only after this */
	if (u->state != LG_U_BODY) return;
	lg_buf_consume(&c->in, (size_t)r);
	lg_up_body(u);
}

static void lg_up_input(struct lg_conn *c, struct lg_upreq *u, int revents);

static void lg_up_io(struct lg_conn *c, int revents)
{
	struct lg_upreq *u;
	long n;
	if (!c->req) {
		lg_conn_close(c);
		return;
	}
	u = (struct lg_upreq *)(void *)c->req; /* struct lg_req starts with its lg_upreq */
	if (u->state == LG_U_CONNECT) {
		int err = 0;
		socklen_t el = sizeof err;
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0) err = errno;
		if (err) {
			lg_up_connect_failed(u, err);
			return;
		}
		if (!(revents & POLLOUT)) return;
		c->flags &= ~(unsigned)LG_F_CONNECTING;
		lg_up_tcp_up(u);
		return;
	}
	if (u->state == LG_U_PROXY) {
		if ((revents & POLLOUT) && lg_conn_flush(c) < 0) {
			lg_up_fail(u, LG_UF_CONNECT, "the proxy closed the connection");
			return;
		}
		if (revents & (POLLIN | POLLHUP | POLLERR)) {
			n = lg_io_read(c, 16384);
			if (n == -1 || (n == 0 && !lg_buf_used(&c->in))) {
				lg_up_fail(u, LG_UF_CONNECT, "the proxy closed the connection during CONNECT");
				return;
			}
			if (n != -2 || (c->flags & LG_F_EOF)) lg_up_proxy_reply(u);
		}
		return;
	}
	if (u->state == LG_U_SEND && (revents & POLLOUT || c->tls)) {
		/* TLS: the handshake moves on whichever way the socket is ready */
		lg_up_send(u);
		if (u->state == LG_U_IDLE || u->c != c || u->state == LG_U_SEND) return;
	}
	if (!(revents & (POLLIN | POLLHUP | POLLERR))) return;
	if (c->flags & LG_F_NOREAD) return;
	lg_rd_lend(c);
	lg_up_input(c, u, revents);
	lg_rd_back(c);
}

/* Reads what the connection has and hands it to the response's head or
 * body. */
static void lg_up_input(struct lg_conn *c, struct lg_upreq *u, int revents)
{
	long n = lg_io_read(c, u->state == LG_U_HEAD ? 65536 + 1 : 65536);
	if (n == -1) {
		char why[300];
		if ((c->flags & LG_F_REUSED) && !u->got_bytes && !u->stale_retry) {
			u->stale_retry = 1;
			lg_conn_close(c);
			u->c = NULL;
			lg_up_connect(u);
			return;
		}
#if LLMGW_TLS
		if (c->tls) {
			lg_tls_why(c->tls, u->host, why, sizeof why);
			lg_up_fail(u, LG_UF_TLS, why);
			return;
		}
#endif
		snprintf(why, sizeof why, "%s", strerror(errno));
		lg_up_fail(u, LG_UF_RESET, why);
		return;
	}
	if (n == -2 && !(revents & (POLLHUP | POLLERR))) return;
	if (n == 0 && !u->got_bytes && (c->flags & LG_F_REUSED) && !u->stale_retry) {
		/* the server closed the pooled connection as we reused it */
		u->stale_retry = 1;
		lg_conn_close(c);
		u->c = NULL;
		lg_up_connect(u);
		return;
	}
	if (n > 0) u->got_bytes = 1;
	if (u->state == LG_U_SEND) return; /* early answer: read on once sent */
	if (u->state == LG_U_HEAD)
		lg_up_head(u);
	else if (u->state == LG_U_BODY)
		lg_up_body(u);
}

/* ===== 11. Providers and dialects ===================================== */

/* --- 11a. the request object and its lifetime, responses to the client --- */

/* The request: from a parsed head to the last byte of its response. All its
 * memory is its own buffers and its arena, released in lg_req_free. */
enum { LG_EP_RELOAD, LG_EP_CHAT, LG_EP_EMBED, LG_EP_MODELS, LG_EP_HEALTH, LG_EP_KEY, LG_EP_GEN, LG_EP_METRICS,
       LG_EP_MESSAGES, LG_EP_MODEL, LG_EP_COUNT, LG_EP_RESPONSES, LG_EP_COMPACT,
       /* the dashboard (section 14): the admin JSON, then the page's files and its login */
       LG_EP_A_OVERVIEW, LG_EP_A_SERIES, LG_EP_A_KEYS, LG_EP_A_REQUESTS, LG_EP_A_GEN, LG_EP_A_HEALTH, LG_EP_UI,
       LG_EP_UI_JS, LG_EP_UI_CSS, LG_EP_UI_LOGIN, LG_EP_UI_LOGOUT };
#define LG_EP_DASH(ep) ((ep) >= LG_EP_A_OVERVIEW)
/* those that need the admin key (or the login cookie): all but the login, logout and style */
#define LG_EP_DASH_ADMIN(ep) (LG_EP_DASH(ep) && (ep) != LG_EP_UI_LOGIN && (ep) != LG_EP_UI_LOGOUT && (ep) != LG_EP_UI_CSS)
/* the Responses API: /v1/responses and /v1/responses/compact */
#define LG_EP_RS(ep) ((ep) == LG_EP_RESPONSES || (ep) == LG_EP_COMPACT)
/* the endpoints that ask a model: accounted, logged, in the ring of recent requests */
#define LG_EP_ASKS_MODEL(ep)                                                                           \
	((ep) == LG_EP_CHAT || (ep) == LG_EP_EMBED || (ep) == LG_EP_MESSAGES || LG_EP_RS(ep) || (ep) == LG_EP_COUNT)
struct lg_creq;
struct lg_wst;
struct lg_dialect; /* a client dialect: its row is in section 11's end */

/* Usage normalized to OpenAI's meaning: prompt includes cached and
 * cache-write tokens, completion includes reasoning tokens. */
struct lg_usage {
	int64_t prompt, completion, cached, cache_write, reasoning;
	double cost; /* USD */
	int seen;
	int estimated; /* a stream cut short: counted by llmgw (lg_acct_counted) */
};

/* One candidate of the plan: a provider, the model it is asked for, and
 * the prices that apply (zero for direct requests). */
struct lg_health;
struct lg_cand {
	struct lg_provider *prov;
	const struct lg_target *t;
	const char *upstream; /* model name sent upstream */
	const char *model;    /* public model name served */
	struct lg_health *h;  /* this target's health (router state, lives on) */
	struct lg_health *ph; /* its provider's in-flight count */
	int group;            /* which model of the request it serves (0 = the first) */
};

struct lg_att_log {
	const char *prov;
	int status; /* HTTP status, or 0 when none came */
	int64_t ms;
	char err[200];
};

/* The top-level members of a request body that the gateway itself reads:
 * found in one pass (lg_req_index), each then a lookup in r->tk. */
enum { LG_TK_MODEL, LG_TK_MESSAGES, LG_TK_INPUT, LG_TK_STREAM, LG_TK_STREAM_OPTIONS, LG_TK_USAGE, LG_TK_MODELS,
       LG_TK_PROVIDER, LG_TK_USER, LG_TK_MAX_TOKENS, LG_TK_MAX_COMPLETION_TOKENS, LG_TK_N,
       LG_TK_MAX_OUTPUT_TOKENS, LG_TK_INSTRUCTIONS, LG_TK_PREV_RESPONSE, LG_TK_COUNT }; /* the last three: Responses */

struct lg_req {
	struct lg_upreq up; /* first member: lg_up_io finds it from c->req */
	struct llmgw *gw;
	struct lg_conn *cc; /* the client; NULL once it went away */
	struct lg_cfg *cfg; /* the snapshot this request keeps for its whole life */
	const struct lg_key *key;
	struct lg_req *next, *prev; /* gw->reqs */
	struct lg_arena a;
	uint64_t seq; /* also in the id: indexes the ring of recent requests */
	char id[40];
	struct lg_stjob *st_job; /* [store]: the admit call it waits for (13g) */
	int st_held;             /* [store]: the store holds its reservation: settle replaces it */
	int st_lim;              /* [store]: the store counted it against rpm/tpm and holds its
	                            max_concurrency lease (refreshed by the loop, released at settle) */
	const struct lg_stview *st_view; /* [store]: what view read from the store, while fn runs */
	struct lg_stvjob *st_vjob;       /* [store]: the view call it waits for */
	int ep, head_only, minor, close, stream, want_usage;
	int gzip_ok; /* the client takes Content-Encoding: gzip (the dashboard's files) */
	int compact; /* Responses compaction (/v1/responses/compact, a compaction_trigger item): the
	                answer is one compaction item holding the summary the target wrote */
	const struct lg_dialect *d; /* the client's dialect (OpenAI chat, Anthropic messages, Responses) */
	int status;      /* sent to the client */
	int sent_head;   /* first byte went to the client: no more fallback */
	int finished, freed;
	/* body as received */
	size_t head_len, body_len;
	int64_t clen;
	int chunked;
	struct lg_chunked ck;
	const char *body; /* in the client's input buffer, stable while in flight */
	struct lg_json j;
	const char *model_req, *user;
	const char *query; /* GET /v1/generation: the query string */
	const char *anth_beta; /* /v1/messages: the client's anthropic-beta header, for Anthropic */
	const char *dropped;   /* /v1/responses: the hosted tools left out, for llmgw-dropped-tools */
	const char *dropped_fields; /* request fields a translation leaves out, for llmgw-dropped-fields */
	struct lg_creq *creq;  /* the canonical request, built on first need */
	struct lg_wst *w;      /* translation state of the current attempt, when not native */
	int rf_tool;           /* response_format rides on a forced Anthropic tool */
	/* routing */
	int nplan, cur;
	struct lg_att_log *att; /* max_attempts of them */
	int natt;
	const struct lg_cand *served;
	struct lg_timer rtm;  /* retry backoff */
	int rounds, retry_seen, att_open, aff_hit;
	int st_wait; /* a store call is answering: 1 inside the call, 2 later (section 13a) */
	int tk[LG_TK_COUNT]; /* the body's top-level members the gateway reads (lg_req_index) */
	int64_t retry_after_ms, t_att_first;
	uint32_t aff_hash;
	/* the current attempt's response */
	int native;  /* the client's bytes go to the provider as they are, and back */
	int rs_seq;  /* native Responses stream: the next sequence_number (an error event llmgw adds) */
	const char *rs_id; /* native Responses stream: the upstream's response id (esc), for that event */
	/* native streams: opening events held until content comes (lg_native_send) */
	struct lg_held { const char *name, *data; size_t n; } held[4];
	int nheld;
	int ustatus, streams, stream_done, saw_finish, up_error, timed_out, q_ok; /* streams: in its framing */
	int err_status, err_retry; /* the error a parser recorded (lg_ev_acct); its reason is err_reason */
	struct lg_buf ubody;   /* buffered body, or stream bytes short of an event */
	struct lg_buf scratch; /* SSE joins */
	struct lg_jtok *rtok;  /* tokens of upstream JSON */
	uint32_t rcap;
	/* accounting */
	struct lg_kstate *ks; /* the key's spend and limits, when admitted */
	double reserved;      /* USD held against the budget until settled */
	double charged;       /* USD already charged to the key and the ledger (lg_acct_charge) */
	int64_t prompt_est, max_out, res_out; /* max_out: the request's; res_out: what is reserved */
	int64_t prompt_max;   /* the prompt tokens reserved: an upper bound (lg_acct_estimate) */
	int64_t t0, t_att, t_first;
	int64_t wall0;
	size_t bytes_in, bytes_out;
	struct lg_usage usage;
	int64_t est_out; /* stream: completion tokens forwarded, as estimated per event */
	/* last, and not zeroed at creation: written before they are read */
	char errmsg[512];
	char canon_err[320];
	char err_reason[281]; /* valid while up_error */
	struct lg_cand plan[LLMGW_MAX_PLAN];
	/* the rewritten head of the last stream chunk (lg_prov_openai_quick);
	 * valid while q_ok, which each attempt clears */
	uint16_t qin_n, qout_n;
	char qin[256], qout[448];
	/* kept while the object waits for reuse (gw->rfree): the request body's
	 * token array, and how many attempts r->att holds */
	struct lg_jtok *keep_jt;
	uint32_t keep_jcap;
	int att_cap;
};

/* A client dialect: OpenAI chat completions, Anthropic messages, OpenAI
 * Responses. One row each (lg_dialects, at the end of this section);
 * nothing else tests which dialect a request speaks. */
struct lg_dialect {
	const char *name;
	int wire; /* providers of the same wire (LG_WIRE_) get the client's bytes natively; -1: none */
	/* the client's body into the canonical request (-1: msg says why, a 400) */
	int (*canon)(struct lg_req *r, struct lg_creq *q, char *msg, size_t mlen);
	/* one canonical event to a streaming client, and the collected answer (lg_ev) */
	void (*stream)(struct lg_req *r, int type, int idx, lg_str a, lg_str b, int raw);
	void (*final)(struct lg_req *r, struct lg_buf *o);
	/* an error response body, and an error event that ends a stream */
	void (*error)(struct lg_buf *b, int status, const char *msg);
	void (*stream_error)(struct lg_req *r, const char *msg);
	/* native traffic: an upstream stream event or whole answer, rewritten
	 * for the client (model name, provider, cost) while its usage, finish
	 * and errors are read into the request; the end of stream an upstream
	 * left out */
	void (*native_event)(struct lg_req *r, lg_str ev, lg_str data);
	int (*native_full)(struct lg_req *r, const char *s, size_t n, struct lg_buf *o);
	void (*native_end)(struct lg_req *r);
	/* GET /v1/models: the models the key may use, in its shape; only: GET /v1/models/{id} */
	void (*models)(struct lg_req *r, struct lg_buf *o, const struct lg_model *only);
	/* where its clients send the key: Bearer in authorization, or the raw key in this header */
	const char *key_header;
	/* header lines an error carries that no retry can fix (401, 403): NULL none */
	const char *no_retry;
	/* a native upstream's refusal (a 4xx but 401/403) reaches the client as
	 * the upstream wrote it, scrubbed of credentials (its SDKs read the details) */
	int pass_errors;
};

struct lg_kstate;
static void lg_srv_finish(struct lg_req *r); /* section 15: ends a request */
static void lg_srv_count_est(struct lg_req *r); /* section 15: count_tokens estimated */
static void lg_d_free(struct lg_wst *w); /* 11l */
static int lg_scrub(const struct lg_cfg *c, const char *p, size_t n, struct lg_buf *out); /* section 12 */
static void lg_scrub_cpy(const struct lg_cfg *c, char *dst, size_t cap, const char *src, size_t n);
static double lg_acct_cost(const struct lg_target *t, const struct lg_usage *u); /* section 13 */
static void lg_d_collect(struct lg_req *r, int type, int idx, lg_str a, lg_str b, int raw); /* 11l */
static int lg_route_key_allows(const struct lg_key *k, const char *model);                 /* 12 */
static void lg_prov_openai_event(struct lg_req *r, lg_str ev, lg_str data);                /* 11e */
static void lg_prov_openai_body(struct lg_req *r, const struct lg_cand *cd, struct lg_buf *o); /* 11e */
static int lg_w_openai(struct lg_req *r, const struct lg_cand *cd, struct lg_buf *o);

/* Tokenizes upstream JSON into r->rtok (grown on demand). */
static int lg_req_json(struct lg_req *r, struct lg_json *j, const char *s, size_t n)
{
	int k;
	if (!r->rtok) { /* a guess, as for the request body: one pass mostly */
		uint32_t cap = (uint32_t)LG_MIN(n / 6 + 32, (size_t)LLMGW_JSON_TOKENS);
		if ((r->rtok = (struct lg_jtok *)malloc((size_t)cap * sizeof *r->rtok))) r->rcap = cap;
	}
	j->t = r->rtok;
	j->cap = r->rcap;
	k = r->rtok ? lg_json_parse(j, s, n) : LG_JSON_NOMEM;
	if (k == LG_JSON_NOMEM) {
		struct lg_json cnt;
		struct lg_jtok *nt;
		memset(&cnt, 0, sizeof cnt);
		k = lg_json_parse(&cnt, s, n);
		if (k < 0) {
			*j = cnt;
			return k;
		}
		/* room for bigger chunks to come: one pass from now on */
		nt = (struct lg_jtok *)realloc(r->rtok, (size_t)LG_MAX(k * 2, 64) * sizeof *nt);
		if (!nt) return LG_JSON_NOMEM;
		r->rtok = nt;
		r->rcap = (uint32_t)LG_MAX(k * 2, 64);
		j->t = nt;
		j->cap = r->rcap;
		k = lg_json_parse(j, s, n);
	}
	return k;
}

static const char *lg_resp_status_text(int s)
{
	switch (s) {
	case 100: return "Continue";
	case 200: return "OK";
	case 303: return "See Other"; /* the dashboard's login and logout */
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 402: return "Payment Required";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 413: return "Payload Too Large";
	case 417: return "Expectation Failed";
	case 422: return "Unprocessable Entity";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 499: return "Client Closed Request";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 529: return "Overloaded";
	default: return s < 300 ? "OK" : s < 500 ? "Client Error" : "Server Error";
	}
}

static const char *lg_resp_err_type(int s)
{
	switch (s) {
	case 400: case 405: case 413: case 431: return "invalid_request_error";
	case 401: return "authentication_error";
	case 402: return "insufficient_quota";
	case 403: return "permission_error";
	case 404: return "not_found_error";
	case 408: return "timeout_error";
	case 429: return "rate_limit_error";
	case 502: return "upstream_error";
	case 503: return "no_provider_available";
	case 504: return "upstream_timeout";
	default: return s < 500 ? "invalid_request_error" : "api_error";
	}
}

/* Writes the response head to the client: the common headers, llmgw's
 * own, then extra (already formatted lines). clen < 0: a chunked stream. */
static void lg_resp_head(struct lg_req *r, int status, const char *ctype, int64_t clen,
                         const char *extra)
{
	struct lg_buf *o = &r->cc->out;
	r->status = status;
	r->sent_head = 1;
	if (r->close || r->gw->stopping) r->close = 1;
	lg_buf_addz(o, "HTTP/1.1 ");
	lg_buf_addu(o, (uint64_t)status, 0);
	lg_buf_addc(o, ' ');
	lg_buf_addz(o, lg_resp_status_text(status));
	lg_buf_addz(o, "\r\nContent-Type: ");
	lg_buf_addz(o, ctype);
	lg_buf_addz(o, "\r\nx-request-id: ");
	lg_buf_addz(o, r->id);
	if (r->served) {
		lg_buf_addz(o, "\r\nx-llmgw-provider: ");
		lg_buf_addz(o, r->served->prov->name);
	}
	if (r->natt) {
		lg_buf_addz(o, "\r\nx-llmgw-attempts: ");
		lg_buf_addu(o, (uint64_t)r->natt, 0);
	}
	if (r->dropped && !r->native) { /* a native upstream got them */
		lg_buf_addz(o, "\r\nllmgw-dropped-tools: ");
		lg_buf_addz(o, r->dropped);
	}
	if (r->dropped_fields && !r->native) {
		lg_buf_addz(o, "\r\nllmgw-dropped-fields: ");
		lg_buf_addz(o, r->dropped_fields);
	}
	lg_buf_addz(o, "\r\n");
	if (extra) lg_buf_addz(o, extra);
	if (clen >= 0) {
		lg_buf_addz(o, "Content-Length: ");
		lg_buf_addu(o, (uint64_t)clen, 0);
		lg_buf_addz(o, "\r\n");
	} else if (r->minor >= 1)
		lg_buf_addz(o, "Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n");
	else
		r->close = 1; /* HTTP/1.0 stream: delimited by close */
	lg_buf_addz(o, r->close ? "Connection: close\r\n\r\n" : "\r\n");
}

/* A whole response with a body (HEAD requests get the head only). */
static void lg_resp_send(struct lg_req *r, int status, const char *ctype, const char *body,
                         size_t n, const char *extra)
{
	if (!r->cc) return;
	lg_resp_head(r, status, ctype, (int64_t)n, extra);
	if (!r->head_only) lg_buf_add(&r->cc->out, body, n);
	r->bytes_out += n;
}

/* An error in the OpenAI dialect: {"error":{"message","type","code"}}. */
static void lg_resp_error(struct lg_req *r, int status, const char *extra, const char *fmt, ...)
    LG_PRINTF(4, 5);
static void lg_resp_error(struct lg_req *r, int status, const char *extra, const char *fmt, ...)
{
	struct lg_buf b;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->errmsg, sizeof r->errmsg, fmt, ap);
	va_end(ap);
	lg_buf_init(&b, 0);
	r->d->error(&b, status, r->errmsg);
	if ((status == 401 || status == 403) && r->d->no_retry) { /* Anthropic's SDKs retry unless told not to */
		char hx[320];
		snprintf(hx, sizeof hx, "%s%s", extra ? extra : "", r->d->no_retry);
		extra = lg_arena_strn(&r->a, hx, strlen(hx));
	}
	if (b.err)
		lg_resp_send(r, 500, "application/json", "{}", 2, NULL);
	else
		lg_resp_send(r, status, "application/json", b.p, b.len, extra);
	lg_buf_free(&b);
}

/* One server-sent event to a streaming client (with an event name for the
 * Anthropic dialect), framed as an HTTP chunk. Data holding line breaks
 * (several data: lines joined) goes out as several data: lines again. */
static void lg_resp_sse(struct lg_req *r, const char *name, const char *data, size_t n)
{
	struct lg_buf *o;
	size_t len = 1 + (name ? strlen(name) + 8 : 0), i, st;
	if (!r->cc) return;
	for (st = 0;; st = i + 1) { /* usually one line: memchr finds no break */
		const char *nl = st < n ? (const char *)memchr(data + st, '\n', n - st) : NULL;
		i = nl ? (size_t)(nl - data) : n;
		len += 7 + (i - st);
		if (!nl) break;
	}
	o = &r->cc->out;
	if (!r->sent_head) lg_resp_head(r, 200, "text/event-stream", -1, NULL);
	if (r->t_first == 0) r->t_first = r->gw->now;
	if (r->minor >= 1) {
		lg_buf_addu(o, len, 1);
		lg_buf_addz(o, "\r\n");
	}
	if (name) {
		lg_buf_addz(o, "event: ");
		lg_buf_addz(o, name);
		lg_buf_addc(o, '\n');
	}
	for (st = 0;; st = i + 1) {
		const char *nl = st < n ? (const char *)memchr(data + st, '\n', n - st) : NULL;
		i = nl ? (size_t)(nl - data) : n;
		lg_buf_addz(o, "data: ");
		lg_buf_add(o, data + st, i - st);
		lg_buf_addc(o, '\n');
		if (!nl) break;
	}
	lg_buf_addz(o, r->minor >= 1 ? "\n\r\n" : "\n");
	r->bytes_out += len;
}

static void lg_resp_event(struct lg_req *r, const char *data, size_t n) { lg_resp_sse(r, NULL, data, n); }

/* A data-only event made of parts that hold no line break, written into
 * the client's buffer as they are (the rewritten chunks of a stream). */
static void lg_resp_event_parts(struct lg_req *r, const lg_str *pt, int np)
{
	struct lg_buf *o;
	size_t len = 8; /* "data: " ... "\n\n" */
	int i;
	if (!r->cc) return;
	for (i = 0; i < np; i++) len += pt[i].n;
	o = &r->cc->out;
	if (!r->sent_head) lg_resp_head(r, 200, "text/event-stream", -1, NULL);
	if (r->t_first == 0) r->t_first = r->gw->now;
	if (lg_buf_reserve(o, len + 24)) return; /* room for all: plain copies */
	{ /* an event per upstream chunk: per-part lg_buf_add calls showed in the profile */
		char *w = o->p + o->len, hx[24];
		if (r->minor >= 1) {
			int k = lg_utoa(hx, len, 1);
			memcpy(w, hx + k, (size_t)(24 - k)), w += 24 - k;
			memcpy(w, "\r\n", 2), w += 2;
		}
		memcpy(w, "data: ", 6), w += 6;
		for (i = 0; i < np; i++) memcpy(w, pt[i].p, pt[i].n), w += pt[i].n;
		memcpy(w, "\n\n\r\n", r->minor >= 1 ? 4 : 2), w += r->minor >= 1 ? 4 : 2;
		o->len = (size_t)(w - o->p);
	}
	r->bytes_out += len;
}

/* Ends a client stream: the last chunk. */
static void lg_resp_stream_end(struct lg_req *r)
{
	if (r->cc && r->minor >= 1) lg_buf_addz(&r->cc->out, "0\r\n\r\n");
}

/* Ends a client stream with an error event in its dialect: never as if
 * it had finished cleanly. */
static LG_COLD void lg_resp_stream_error(struct lg_req *r, const char *msg)
{
	if (r->status < 400) r->status = 502; /* the head said 200; the access log says what happened */
	r->d->stream_error(r, msg);
	lg_resp_stream_end(r);
}

/* Did the client ask for embeddings as base64 (encoding_format)? */
static int lg_resp_b64(const struct lg_req *r)
{
	return lg_str_eq(lg_jesc(&r->j, r->body, lg_json_get(&r->j, r->body, 0, "encoding_format")), "base64");
}

/* An embedding vector the way OpenAI's API answers encoding_format
 * "base64": the base64 of little-endian float32s, in quotes. */
static void lg_resp_vector(struct lg_buf *o, const double *v, size_t n)
{
	size_t i;
	{
		unsigned char *raw = (unsigned char *)malloc(n * 4 + 1);
		char *b64 = (char *)malloc(n * 4 / 3 * 4 + 16);
		if (raw && b64) {
			for (i = 0; i < n; i++) {
				float f = (float)v[i];
				uint32_t u;
				memcpy(&u, &f, 4);
				raw[4 * i] = (unsigned char)u, raw[4 * i + 1] = (unsigned char)(u >> 8);
				raw[4 * i + 2] = (unsigned char)(u >> 16), raw[4 * i + 3] = (unsigned char)(u >> 24);
			}
			lg_base64(raw, n * 4, b64);
			lg_buf_addc(o, '"');
			lg_buf_addz(o, b64);
			lg_buf_addc(o, '"');
		} else {
			o->err = 1;
		}
		free(raw);
		free(b64);
	}
}

/* What a finished request keeps for the next one on gw->rfree: its
 * buffers and token arrays of ordinary size, its attempt log and first
 * arena block. Bigger ones go back to malloc. */
#define LG_KEEP_BYTES 16384
#define LG_KEEP_TOKENS 1024

/* r->tk from the body's top-level members (the first of a repeated key,
 * as lg_json_get): one pass instead of a walk per field. */
static void lg_req_index(struct lg_req *r)
{
	struct lg_jit it = lg_json_iter(&r->j, 0);
	int i;
	for (i = 0; i < LG_TK_COUNT; i++) r->tk[i] = -1;
	while (lg_json_next(&r->j, &it)) {
		lg_str k = lg_json_raw(&r->j, r->body, it.key);
		int x = -1;
		switch (k.n) {
		case 1: x = k.p[0] == 'n' ? LG_TK_N : -1; break;
		case 4: x = memcmp(k.p, "user", 4) == 0 ? LG_TK_USER : -1; break;
		case 5:
			x = memcmp(k.p, "model", 5) == 0   ? LG_TK_MODEL
			    : memcmp(k.p, "input", 5) == 0 ? LG_TK_INPUT
			    : memcmp(k.p, "usage", 5) == 0 ? LG_TK_USAGE
			                                   : -1;
			break;
		case 6:
			x = memcmp(k.p, "stream", 6) == 0 ? LG_TK_STREAM : memcmp(k.p, "models", 6) == 0 ? LG_TK_MODELS : -1;
			break;
		case 8:
			x = memcmp(k.p, "messages", 8) == 0   ? LG_TK_MESSAGES
			    : memcmp(k.p, "provider", 8) == 0 ? LG_TK_PROVIDER
			                                      : -1;
			break;
		case 10: x = memcmp(k.p, "max_tokens", 10) == 0 ? LG_TK_MAX_TOKENS : -1; break;
		case 12: x = memcmp(k.p, "instructions", 12) == 0 ? LG_TK_INSTRUCTIONS : -1; break;
		case 14: x = memcmp(k.p, "stream_options", 14) == 0 ? LG_TK_STREAM_OPTIONS : -1; break;
		case 17: x = memcmp(k.p, "max_output_tokens", 17) == 0 ? LG_TK_MAX_OUTPUT_TOKENS : -1; break;
		case 20: x = memcmp(k.p, "previous_response_id", 20) == 0 ? LG_TK_PREV_RESPONSE : -1; break;
		case 21: x = memcmp(k.p, "max_completion_tokens", 21) == 0 ? LG_TK_MAX_COMPLETION_TOKENS : -1; break;
		default: break;
		}
		if (x >= 0 && r->tk[x] < 0) r->tk[x] = it.val;
	}
}

/* Requests are freed at the end of the loop iteration, so callbacks still
 * on the stack never see freed memory. */
static void lg_req_destroy(struct lg_req *r)
{
	lg_buf_free(&r->up.req);
	lg_buf_free(&r->ubody);
	lg_buf_free(&r->scratch);
	free(r->rtok);
	free(r->j.t);
	free(r->keep_jt);
	free(r->att);
	if (r->w) {
		lg_d_free(r->w);
		free(r->w);
	}
	lg_arena_free(&r->a);
	free(r);
}

static void lg_req_keepbuf(struct lg_buf *b)
{
	if (b->cap > LG_KEEP_BYTES || b->err) lg_buf_free(b);
	b->off = b->len = 0;
}

static void lg_req_free(struct lg_req *r)
{
	struct llmgw *gw = r->gw;
	if (gw->nrfree >= LG_RFREE || gw->stopping) {
		lg_req_destroy(r);
		return;
	}
	lg_req_keepbuf(&r->up.req);
	lg_req_keepbuf(&r->ubody);
	lg_buf_free(&r->scratch);
	if (r->rcap > LG_KEEP_TOKENS) {
		free(r->rtok);
		r->rtok = NULL;
		r->rcap = 0;
	}
	if (r->j.t && !r->keep_jt && r->j.cap <= LG_KEEP_TOKENS) {
		r->keep_jt = r->j.t;
		r->keep_jcap = r->j.cap;
	} else {
		free(r->j.t);
	}
	r->j.t = NULL;
	if (r->w) {
		lg_d_free(r->w);
		free(r->w);
		r->w = NULL;
	}
	lg_arena_reset(&r->a);
	r->next = gw->rfree;
	gw->rfree = r;
	gw->nrfree++;
}

/* The resolver thread woke the loop: requests waiting for DNS look again. */
static void lg_req_dns_wake(struct llmgw *gw)
{
	struct lg_req *r, *nx;
	for (r = gw->reqs; r; r = nx) {
		nx = r->next;
		if (r->up.state == LG_U_DNS) lg_up_dns_ready(&r->up);
	}
}

/* The requests that ended in this iteration of the loop, freed. */
static void lg_req_reap(struct llmgw *gw)
{
	while (gw->dead) {
		struct lg_req *r = gw->dead;
		gw->dead = r->next;
		lg_req_free(r);
	}
}

/* --- 11b. the canonical request: what every client dialect is turned into --- */

/* Strings are views into the request body (or its arena), still JSON-escaped
 * ("esc"): writers put them between quotes as they are. args and schemas
 * are raw JSON text. Lives as long as the request. */
enum { LG_P_TEXT, LG_P_IMAGE, LG_P_TOOL_CALL, LG_P_TOOL_RESULT, LG_P_THINKING };
/* LG_R_SYSTEM: a system entry inside the messages (Claude Code sends them):
 * providers that take system messages anywhere get it in place, the others
 * have it folded into their system instructions, in order. */
enum { LG_R_USER, LG_R_ASSISTANT, LG_R_SYSTEM };
enum { LG_TC_UNSET, LG_TC_AUTO, LG_TC_NONE, LG_TC_REQUIRED, LG_TC_FUNC };

struct lg_cpart {
	int type, is_error;
	lg_str text;        /* esc: TEXT, THINKING, TOOL_RESULT content */
	lg_str media, data; /* esc: IMAGE media type and base64 bytes */
	lg_str url;         /* esc: IMAGE by URL */
	lg_str id, name;    /* esc: TOOL_CALL, TOOL_RESULT */
	lg_str args;        /* raw JSON: TOOL_CALL arguments (an object) */
	lg_str sig;         /* esc: THINKING signature */
};

struct lg_cmsg {
	int role;
	struct lg_cpart *p;
	int np;
};

struct lg_ctool {
	lg_str name, desc; /* esc */
	lg_str schema;     /* raw JSON */
	/* Responses: a custom tool (free text as "input"); a namespace group's
	 * tool (name = NS__BARE), both put back in the answer's items */
	int custom;
	lg_str ns, bare; /* esc */
};
#define LG_RF_TOOL "json_response" /* response_format, as a tool for providers without it */

struct lg_creq {
	struct lg_cpart *sys;
	int nsys;
	struct lg_cmsg *m;
	int nm;
	struct lg_ctool *tools;
	int ntools, tool_choice, parallel; /* parallel: -1 unset */
	lg_str tool_name;                 /* esc, LG_TC_FUNC */
	int64_t max_tokens, thinking;     /* 0: unset */
	lg_str temperature, top_p, top_k, seed; /* raw numbers; n = 0 when unset */
	lg_str *stop;                     /* esc */
	int nstop, rf;                    /* response_format: 0 none, 1 json_object, 2 json_schema */
	struct lg_ctool rf_tool;          /* rf as a tool whose input is the answer (canonicalization) */
	lg_str rf_schema, user;           /* raw JSON, esc */
	lg_str rf_name;                   /* esc: json_schema's name (Responses text.format), or none */
	int rf_strict;                    /* json_schema's strict: 1 true, 0 false or unset */
	lg_str effort;                    /* esc: reasoning effort as the client named it (Responses), for
	                                     OpenAI chat targets; q->thinking is its budget */
};

/* A request field a translation leaves out, named (once) in the
 * llmgw-dropped-fields header of a translated answer. */
static void lg_canon_drop(struct lg_req *r, const char *field)
{
	const char *o = r->dropped_fields;
	size_t n = o ? strlen(o) : 0, f = strlen(field);
	char *d;
	if (o && strstr(o, field)) return;
	if (!(d = (char *)lg_arena_alloc(&r->a, n + f + 2))) return;
	if (n) memcpy(d, o, n);
	if (n) d[n++] = ',';
	memcpy(d + n, field, f + 1);
	r->dropped_fields = d;
}

/* A reasoning effort as a thinking budget (0: none or unknown). */
static int64_t lg_canon_effort(lg_str v)
{
	return lg_str_eq(v, "low") ? 1024 : lg_str_eq(v, "medium") ? 4096 : lg_str_eq(v, "high") ? 16384 : 0;
}

/* A JSON-encoded string (esc) unescaped into the arena: raw JSON text. */
static lg_str lg_canon_unesc(struct lg_req *r, lg_str esc)
{
	char *o = (char *)lg_arena_alloc(&r->a, esc.n + 1);
	long n;
	if (!o || (n = lg_json_unescape(esc.p, esc.n, o)) < 0) return lg_str_of("{}", 2);
	return lg_str_of(o, (size_t)n);
}

/* Raw JSON text as esc (JSON-string content) in the arena. */
static lg_str lg_canon_esc(struct lg_req *r, lg_str raw)
{
	struct lg_buf b;
	char *o;
	size_t n;
	lg_buf_init(&b, 0);
	lg_json_wstr(&b, raw.p, raw.n);
	n = b.len >= 2 ? b.len - 2 : 0;
	o = lg_arena_strn(&r->a, b.p ? b.p + 1 : "", n);
	lg_buf_free(&b);
	return lg_str_of(o ? o : "", o ? n : 0);
}

static struct lg_cpart *lg_canon_part(struct lg_req *r, struct lg_cmsg *m, int cap, int type)
{
	struct lg_cpart *p;
	if (!m->p) m->p = (struct lg_cpart *)lg_arena_alloc(&r->a, (size_t)(cap > 0 ? cap : 1) * sizeof *p);
	if (!m->p || m->np >= cap) return NULL;
	p = &m->p[m->np++];
	p->type = type;
	return p;
}

/* An image given as a URL: data: URLs become media type + base64. */
static void lg_canon_image(struct lg_cpart *p, lg_str url)
{
	size_t i;
	if (url.n > 5 && memcmp(url.p, "data:", 5) == 0) {
		for (i = 5; i < url.n && url.p[i] != ';' && url.p[i] != ','; i++) {
		}
		if (i + 8 <= url.n && memcmp(url.p + i, ";base64,", 8) == 0) {
			p->media = lg_str_of(url.p + 5, i - 5);
			p->data = lg_str_of(url.p + i + 8, url.n - i - 8);
			return;
		}
	}
	p->url = url;
}

/* Text of an OpenAI content (a string, or parts of type text). Each text
 * part becomes a part of m; images too when allowed. */
static int lg_canon_oa_content(struct lg_req *r, struct lg_cmsg *m, int cap, int c, int images, char *msg,
                               size_t mlen)
{
	const struct lg_json *j = &r->j;
	const char *s = r->body;
	uint32_t i;
	if (lg_json_type(j, c) == LG_J_STR) {
		struct lg_cpart *p;
		if (j->t[c].end == j->t[c].start) return 0;
		if (!(p = lg_canon_part(r, m, cap, LG_P_TEXT))) return -1;
		p->text = lg_json_raw(j, s, c);
		return 0;
	}
	if (lg_json_type(j, c) != LG_J_ARR) return 0;
	for (i = 0; i < j->t[c].size; i++) {
		int e = lg_json_at(j, c, i);
		lg_str ty = lg_jesc(j, s, lg_json_get(j, s, e, "type"));
		struct lg_cpart *p;
		if (lg_str_eq(ty, "text") || lg_json_get(j, s, e, "text") >= 0) {
			lg_str t = lg_jesc(j, s, lg_json_get(j, s, e, "text"));
			if (!t.n) continue;
			if (!(p = lg_canon_part(r, m, cap, LG_P_TEXT))) return -1;
			p->text = t;
		} else if (lg_str_eq(ty, "image_url")) {
			int iu = lg_json_get(j, s, e, "image_url");
			lg_str url = lg_jesc(j, s, lg_json_type(j, iu) == LG_J_OBJ ? lg_json_get(j, s, iu, "url") : iu);
			if (!images) {
				snprintf(msg, mlen, "messages: images are only allowed in user messages");
				return -2;
			}
			if (!(p = lg_canon_part(r, m, cap, LG_P_IMAGE))) return -1;
			lg_canon_image(p, url);
		}
	}
	return 0;
}

/* OpenAI Chat Completions body -> canonical. 0, or -2 with msg (a 400). */
static int lg_canon_openai(struct lg_req *r, struct lg_creq *q, char *msg, size_t mlen)
{
	const struct lg_json *j = &r->j;
	const char *s = r->body;
	int msgs = lg_json_get(j, s, 0, "messages"), t, k;
	uint32_t i, n = j->t[msgs].size;
	q->m = (struct lg_cmsg *)lg_arena_alloc(&r->a, (n + 1) * sizeof *q->m);
	q->sys = (struct lg_cpart *)lg_arena_alloc(&r->a, (size_t)j->t[msgs].next * sizeof *q->sys);
	if (!q->m || !q->sys) return -1;
	for (i = 0; i < n; i++) {
		int e = lg_json_at(j, msgs, i), c = lg_json_get(j, s, e, "content");
		lg_str role = lg_jesc(j, s, lg_json_get(j, s, e, "role"));
		int cap = (int)(j->t[e].next - (uint32_t)e) + 1;
		struct lg_cmsg *m = &q->m[q->nm];
		memset(m, 0, sizeof *m);
		if (lg_str_eq(role, "system") || lg_str_eq(role, "developer")) {
			struct lg_cmsg tmp;
			memset(&tmp, 0, sizeof tmp);
			tmp.p = q->sys + q->nsys;
			if (lg_canon_oa_content(r, &tmp, cap, c, 0, msg, mlen) < 0) return -2;
			q->nsys += tmp.np;
			continue;
		}
		if (lg_str_eq(role, "user")) {
			m->role = LG_R_USER;
			if ((k = lg_canon_oa_content(r, m, cap, c, 1, msg, mlen)) < 0) return k;
		} else if (lg_str_eq(role, "assistant")) {
			int tc = lg_json_get(j, s, e, "tool_calls"), rc = lg_json_get(j, s, e, "reasoning_content");
			uint32_t x;
			m->role = LG_R_ASSISTANT;
			if (lg_json_type(j, rc) == LG_J_STR && j->t[rc].end > j->t[rc].start) {
				struct lg_cpart *p = lg_canon_part(r, m, cap, LG_P_THINKING);
				if (!p) return -1;
				p->text = lg_json_raw(j, s, rc);
			}
			if ((k = lg_canon_oa_content(r, m, cap, c, 0, msg, mlen)) < 0) return k;
			for (x = 0; lg_json_type(j, tc) == LG_J_ARR && x < j->t[tc].size; x++) {
				int call = lg_json_at(j, tc, x), fn = lg_json_get(j, s, call, "function");
				struct lg_cpart *p = lg_canon_part(r, m, cap, LG_P_TOOL_CALL);
				lg_str a = lg_jesc(j, s, lg_json_get(j, s, fn, "arguments"));
				if (!p) return -1;
				p->id = lg_jesc(j, s, lg_json_get(j, s, call, "id"));
				p->name = lg_jesc(j, s, lg_json_get(j, s, fn, "name"));
				p->args = a.n ? lg_canon_unesc(r, a) : lg_str_of("{}", 2);
				{ /* arguments must be a JSON object to become input/args */
					struct lg_json aj;
					lg_str tr = lg_str_trim(p->args);
					memset(&aj, 0, sizeof aj);
					if (!tr.n || tr.p[0] != '{' || lg_json_parse(&aj, p->args.p, p->args.n) <= 0)
						p->args = lg_str_of("{}", 2);
				}
			}
		} else if (lg_str_eq(role, "tool")) {
			struct lg_cpart *p;
			m->role = LG_R_USER;
			if (!(p = lg_canon_part(r, m, cap + 1, LG_P_TOOL_RESULT))) return -1;
			p->id = lg_jesc(j, s, lg_json_get(j, s, e, "tool_call_id"));
			if (lg_json_type(j, c) == LG_J_STR) {
				p->text = lg_json_raw(j, s, c);
			} else if (lg_json_type(j, c) == LG_J_ARR) { /* text parts, joined */
				struct lg_buf b;
				uint32_t x;
				lg_buf_init(&b, 0);
				for (x = 0; x < j->t[c].size; x++) {
					lg_str tx = lg_jesc(j, s, lg_json_get(j, s, lg_json_at(j, c, x), "text"));
					lg_buf_adds(&b, tx);
				}
				p->text = lg_str_of(lg_arena_strn(&r->a, b.p ? b.p : "", b.len), b.len);
				lg_buf_free(&b);
			}
		} else {
			snprintf(msg, mlen, "messages[%u].role must be system, developer, user, assistant or tool", i);
			return -2;
		}
		q->nm++;
	}
	t = lg_json_get(j, s, 0, "tools");
	if (lg_json_type(j, t) == LG_J_ARR && j->t[t].size) {
		q->tools = (struct lg_ctool *)lg_arena_alloc(&r->a, j->t[t].size * sizeof *q->tools);
		if (!q->tools) return -1;
		for (i = 0; i < j->t[t].size; i++) {
			int fn = lg_json_get(j, s, lg_json_at(j, t, i), "function"), pa;
			struct lg_ctool *tl = &q->tools[q->ntools];
			if (fn < 0) continue;
			tl->name = lg_jesc(j, s, lg_json_get(j, s, fn, "name"));
			tl->desc = lg_jesc(j, s, lg_json_get(j, s, fn, "description"));
			pa = lg_json_get(j, s, fn, "parameters");
			tl->schema = pa >= 0 ? lg_json_span(j, s, pa) : lg_str_of("{\"type\":\"object\"}", 17);
			if (tl->name.n) q->ntools++;
		}
	}
	t = lg_json_get(j, s, 0, "tool_choice");
	if (lg_json_type(j, t) == LG_J_STR) {
		lg_str v = lg_json_raw(j, s, t);
		q->tool_choice = lg_str_eq(v, "none") ? LG_TC_NONE : lg_str_eq(v, "required") ? LG_TC_REQUIRED : LG_TC_AUTO;
	} else if (lg_json_type(j, t) == LG_J_OBJ) {
		q->tool_choice = LG_TC_FUNC;
		q->tool_name = lg_jesc(j, s, lg_json_get(j, s, lg_json_get(j, s, t, "function"), "name"));
	}
	t = lg_json_get(j, s, 0, "parallel_tool_calls");
	q->parallel = lg_json_type(j, t) == LG_J_TRUE ? 1 : lg_json_type(j, t) == LG_J_FALSE ? 0 : -1;
	q->max_tokens = r->max_out;
	q->temperature = lg_jnum(j, s, lg_json_get(j, s, 0, "temperature"));
	q->top_p = lg_jnum(j, s, lg_json_get(j, s, 0, "top_p"));
	q->top_k = lg_jnum(j, s, lg_json_get(j, s, 0, "top_k"));
	q->seed = lg_jnum(j, s, lg_json_get(j, s, 0, "seed"));
	q->user = lg_jesc(j, s, lg_json_get(j, s, 0, "user"));
	t = lg_json_get(j, s, 0, "stop");
	if (lg_json_type(j, t) == LG_J_STR) {
		q->stop = (lg_str *)lg_arena_alloc(&r->a, sizeof *q->stop);
		if (q->stop) q->stop[q->nstop++] = lg_json_raw(j, s, t);
	} else if (lg_json_type(j, t) == LG_J_ARR && j->t[t].size) {
		q->stop = (lg_str *)lg_arena_alloc(&r->a, j->t[t].size * sizeof *q->stop);
		for (i = 0; q->stop && i < j->t[t].size; i++) q->stop[q->nstop++] = lg_jesc(j, s, lg_json_at(j, t, i));
	}
	t = lg_json_get(j, s, 0, "response_format");
	if (lg_json_type(j, t) == LG_J_OBJ) {
		lg_str ty = lg_jesc(j, s, lg_json_get(j, s, t, "type"));
		if (lg_str_eq(ty, "json_object")) q->rf = 1;
		if (lg_str_eq(ty, "json_schema")) {
			int sc = lg_json_get(j, s, lg_json_get(j, s, t, "json_schema"), "schema");
			q->rf = 2;
			if (sc >= 0) q->rf_schema = lg_json_span(j, s, sc);
		}
		/* for providers without structured output: a forced tool whose input is the answer */
		q->rf_tool.name = lg_strz(LG_RF_TOOL);
		q->rf_tool.desc = lg_strz("Answer with JSON");
		q->rf_tool.schema = q->rf_schema.n ? q->rf_schema : lg_strz("{\"type\":\"object\"}");
	}
	t = lg_json_get(j, s, 0, "reasoning_effort");
	if (lg_json_type(j, t) == LG_J_STR) q->thinking = lg_canon_effort(lg_json_raw(j, s, t));
	return 0;
}

/* Anthropic Messages body -> canonical. */
static int lg_canon_anthropic(struct lg_req *r, struct lg_creq *q, char *msg, size_t mlen)
{
	const struct lg_json *j = &r->j;
	const char *s = r->body;
	lg_str thk, eff;
	int msgs = lg_json_get(j, s, 0, "messages"), t;
	uint32_t i, n = j->t[msgs].size;
	t = lg_json_get(j, s, 0, "system");
	q->m = (struct lg_cmsg *)lg_arena_alloc(&r->a, (n + 1) * sizeof *q->m);
	q->sys = (struct lg_cpart *)lg_arena_alloc(&r->a, (size_t)(t >= 0 ? j->t[t].next - (uint32_t)t + 1 : 1) * sizeof *q->sys);
	if (!q->m || !q->sys) return -1;
	if (lg_json_type(j, t) == LG_J_STR && j->t[t].end > j->t[t].start) {
		q->sys[q->nsys].type = LG_P_TEXT;
		q->sys[q->nsys++].text = lg_json_raw(j, s, t);
	} else if (lg_json_type(j, t) == LG_J_ARR) {
		for (i = 0; i < j->t[t].size; i++) {
			lg_str tx = lg_jesc(j, s, lg_json_get(j, s, lg_json_at(j, t, i), "text"));
			if (!tx.n) continue;
			q->sys[q->nsys].type = LG_P_TEXT;
			q->sys[q->nsys++].text = tx;
		}
	}
	for (i = 0; i < n; i++) {
		int e = lg_json_at(j, msgs, i), c = lg_json_get(j, s, e, "content");
		lg_str role = lg_jesc(j, s, lg_json_get(j, s, e, "role"));
		int cap = (int)(j->t[e].next - (uint32_t)e) + 1;
		struct lg_cmsg *m = &q->m[q->nm];
		uint32_t x;
		memset(m, 0, sizeof *m);
		if (lg_str_eq(role, "user"))
			m->role = LG_R_USER;
		else if (lg_str_eq(role, "assistant"))
			m->role = LG_R_ASSISTANT;
		else if (lg_str_eq(role, "system"))
			m->role = LG_R_SYSTEM; /* text blocks only, below */
		else {
			snprintf(msg, mlen, "messages[%u].role must be user, assistant or system", i);
			return -2;
		}
		if (lg_json_type(j, c) == LG_J_STR) {
			struct lg_cpart *p = lg_canon_part(r, m, cap, LG_P_TEXT);
			if (!p) return -1;
			p->text = lg_json_raw(j, s, c);
		}
		for (x = 0; lg_json_type(j, c) == LG_J_ARR && x < j->t[c].size; x++) {
			int b = lg_json_at(j, c, x);
			lg_str ty = lg_jesc(j, s, lg_json_get(j, s, b, "type"));
			struct lg_cpart *p;
			if (lg_str_eq(ty, "text")) {
				lg_str tx = lg_jesc(j, s, lg_json_get(j, s, b, "text"));
				if (!tx.n) continue;
				if (!(p = lg_canon_part(r, m, cap, LG_P_TEXT))) return -1;
				p->text = tx;
			} else if (lg_str_eq(ty, "image")) {
				int src = lg_json_get(j, s, b, "source");
				if (!(p = lg_canon_part(r, m, cap, LG_P_IMAGE))) return -1;
				if (lg_str_eq(lg_jesc(j, s, lg_json_get(j, s, src, "type")), "url")) {
					p->url = lg_jesc(j, s, lg_json_get(j, s, src, "url"));
				} else {
					p->media = lg_jesc(j, s, lg_json_get(j, s, src, "media_type"));
					p->data = lg_jesc(j, s, lg_json_get(j, s, src, "data"));
				}
			} else if (lg_str_eq(ty, "tool_use")) {
				int in = lg_json_get(j, s, b, "input");
				if (!(p = lg_canon_part(r, m, cap, LG_P_TOOL_CALL))) return -1;
				p->id = lg_jesc(j, s, lg_json_get(j, s, b, "id"));
				p->name = lg_jesc(j, s, lg_json_get(j, s, b, "name"));
				p->args = lg_json_type(j, in) == LG_J_OBJ ? lg_json_span(j, s, in) : lg_str_of("{}", 2);
			} else if (lg_str_eq(ty, "tool_result")) {
				int ct = lg_json_get(j, s, b, "content");
				if (!(p = lg_canon_part(r, m, cap, LG_P_TOOL_RESULT))) return -1;
				p->id = lg_jesc(j, s, lg_json_get(j, s, b, "tool_use_id"));
				p->is_error = lg_json_truthy(j, lg_json_get(j, s, b, "is_error"));
				if (lg_json_type(j, ct) == LG_J_STR) {
					p->text = lg_json_raw(j, s, ct);
				} else if (lg_json_type(j, ct) == LG_J_ARR) {
					struct lg_buf tb;
					uint32_t y;
					lg_buf_init(&tb, 0);
					for (y = 0; y < j->t[ct].size; y++) {
						lg_str tx = lg_jesc(j, s, lg_json_get(j, s, lg_json_at(j, ct, y), "text"));
						if (tb.len && tx.n) lg_buf_addz(&tb, "\\n");
						lg_buf_adds(&tb, tx);
					}
					p->text = lg_str_of(lg_arena_strn(&r->a, tb.p ? tb.p : "", tb.len), tb.len);
					lg_buf_free(&tb);
				}
			} else if (lg_str_eq(ty, "thinking")) {
				if (!(p = lg_canon_part(r, m, cap, LG_P_THINKING))) return -1;
				p->text = lg_jesc(j, s, lg_json_get(j, s, b, "thinking"));
				p->sig = lg_jesc(j, s, lg_json_get(j, s, b, "signature"));
			}
		}
		q->nm++;
	}
	t = lg_json_get(j, s, 0, "tools");
	if (lg_json_type(j, t) == LG_J_ARR && j->t[t].size) {
		q->tools = (struct lg_ctool *)lg_arena_alloc(&r->a, j->t[t].size * sizeof *q->tools);
		if (!q->tools) return -1;
		for (i = 0; i < j->t[t].size; i++) {
			int e = lg_json_at(j, t, i), sc = lg_json_get(j, s, e, "input_schema");
			struct lg_ctool *tl = &q->tools[q->ntools];
			tl->name = lg_jesc(j, s, lg_json_get(j, s, e, "name"));
			tl->desc = lg_jesc(j, s, lg_json_get(j, s, e, "description"));
			tl->schema = sc >= 0 ? lg_json_span(j, s, sc) : lg_str_of("{\"type\":\"object\"}", 17);
			if (tl->name.n) q->ntools++;
		}
	}
	t = lg_json_get(j, s, 0, "tool_choice");
	q->parallel = -1;
	if (lg_json_type(j, t) == LG_J_OBJ) {
		lg_str ty = lg_jesc(j, s, lg_json_get(j, s, t, "type"));
		q->tool_choice = lg_str_eq(ty, "any") ? LG_TC_REQUIRED : lg_str_eq(ty, "none") ? LG_TC_NONE
		                 : lg_str_eq(ty, "tool") ? LG_TC_FUNC : LG_TC_AUTO;
		q->tool_name = lg_jesc(j, s, lg_json_get(j, s, t, "name"));
		if (lg_json_truthy(j, lg_json_get(j, s, t, "disable_parallel_tool_use"))) q->parallel = 0;
	}
	q->max_tokens = r->max_out;
	q->temperature = lg_jnum(j, s, lg_json_get(j, s, 0, "temperature"));
	q->top_p = lg_jnum(j, s, lg_json_get(j, s, 0, "top_p"));
	q->top_k = lg_jnum(j, s, lg_json_get(j, s, 0, "top_k"));
	q->user = lg_jesc(j, s, lg_json_get(j, s, lg_json_get(j, s, 0, "metadata"), "user_id"));
	t = lg_json_get(j, s, 0, "stop_sequences");
	if (lg_json_type(j, t) == LG_J_ARR && j->t[t].size) {
		q->stop = (lg_str *)lg_arena_alloc(&r->a, j->t[t].size * sizeof *q->stop);
		for (i = 0; q->stop && i < j->t[t].size; i++) q->stop[q->nstop++] = lg_jesc(j, s, lg_json_at(j, t, i));
	}
	/* thinking: enabled with a budget, or adaptive at output_config's effort
	 * (low, medium, high, max); an effort for targets that take one. What a
	 * translation cannot carry is named in llmgw-dropped-fields. */
	t = lg_json_get(j, s, 0, "thinking");
	thk = lg_jesc(j, s, lg_json_get(j, s, t, "type"));
	eff = lg_jesc(j, s, lg_json_get(j, s, lg_json_get(j, s, 0, "output_config"), "effort"));
	if (lg_str_eq(thk, "enabled")) {
		q->thinking = lg_json_i64(j, s, lg_json_get(j, s, t, "budget_tokens"));
		q->effort = lg_strz(q->thinking <= 2048 ? "low" : q->thinking <= 8192 ? "medium" : "high");
	} else if (lg_str_eq(thk, "adaptive")) {
		q->effort = lg_str_eq(eff, "low") || lg_str_eq(eff, "medium") ? eff : lg_strz(eff.n ? "high" : "medium");
		q->thinking = lg_canon_effort(q->effort);
	}
	if (lg_json_get(j, s, 0, "context_management") >= 0) lg_canon_drop(r, "context_management");
	if (eff.n && !lg_str_eq(thk, "adaptive")) lg_canon_drop(r, "output_config");
	return 0;
}

/* The text parts of a Responses content array (input_text, output_text,
 * text) joined into the arena: a tool output, a reasoning summary. sep:
 * what goes between two parts (esc). */
static lg_str lg_canon_rs_join(struct lg_req *r, int arr, const char *key, const char *sep)
{
	const struct lg_json *j = &r->j;
	const char *s = r->body;
	struct lg_buf b;
	uint32_t x;
	lg_str out;
	lg_buf_init(&b, 0);
	for (x = 0; lg_json_type(j, arr) == LG_J_ARR && x < j->t[arr].size; x++) {
		lg_str tx = lg_jesc(j, s, lg_json_get(j, s, lg_json_at(j, arr, x), key));
		if (!tx.n) continue;
		if (b.len) lg_buf_addz(&b, sep);
		lg_buf_adds(&b, tx);
	}
	out.p = lg_arena_strn(&r->a, b.p ? b.p : "", b.len);
	out.n = out.p ? b.len : 0;
	lg_buf_free(&b);
	return out.p ? out : lg_str_of("", 0);
}

/* A Responses message's content (a string, or parts input_text,
 * output_text, input_image) into m: 0, or -2 with msg. */
static int lg_canon_rs_content(struct lg_req *r, struct lg_cmsg *m, int cap, int c, int images, uint32_t i,
                               char *msg, size_t mlen)
{
	const struct lg_json *j = &r->j;
	const char *s = r->body;
	struct lg_cpart *p;
	uint32_t x;
	if (lg_json_type(j, c) == LG_J_STR) {
		if (j->t[c].end == j->t[c].start) return 0;
		if (!(p = lg_canon_part(r, m, cap, LG_P_TEXT))) return -1;
		p->text = lg_json_raw(j, s, c);
		return 0;
	}
	if (lg_json_type(j, c) != LG_J_ARR) {
		snprintf(msg, mlen, "input[%u].content must be a string or an array of parts", i);
		return -2;
	}
	for (x = 0; x < j->t[c].size; x++) {
		int e = lg_json_at(j, c, x);
		lg_str ty = lg_jesc(j, s, lg_json_get(j, s, e, "type"));
		if (lg_str_eq(ty, "input_text") || lg_str_eq(ty, "output_text") || lg_str_eq(ty, "text")) {
			lg_str t = lg_jesc(j, s, lg_json_get(j, s, e, "text"));
			if (!t.n) continue;
			if (!(p = lg_canon_part(r, m, cap, LG_P_TEXT))) return -1;
			p->text = t;
		} else if (lg_str_eq(ty, "input_image")) {
			int iu = lg_json_get(j, s, e, "image_url");
			lg_str url = lg_jesc(j, s, lg_json_type(j, iu) == LG_J_OBJ ? lg_json_get(j, s, iu, "url") : iu);
			if (!images) {
				snprintf(msg, mlen, "input[%u].content[%u]: images are only allowed in user messages", i, x);
				return -2;
			}
			if (!url.n) {
				snprintf(msg, mlen, "input[%u].content[%u]: input_image needs an image_url (file_id is not "
				                    "supported: llmgw keeps no files)", i, x);
				return -2;
			}
			if (!(p = lg_canon_part(r, m, cap, LG_P_IMAGE))) return -1;
			lg_canon_image(p, url);
		} else if (lg_str_eq(ty, "input_file") || lg_str_eq(ty, "input_audio")) {
			snprintf(msg, mlen, "input[%u].content[%u]: %.*s parts are not supported", i, x, (int)LG_MIN(ty.n, 20),
			         ty.p);
			return -2;
		} /* refusal and the like: nothing to send back */
	}
	return 0;
}

/* Compaction translated: the target writes a summary, which goes back to
 * the client as a compaction item's encrypted_content (LG_RS_SUMMARY and
 * the text: llmgw keeps nothing) and returns as a user turn. */
#define LG_RS_SUMMARY "llmgw-summary:"
#define LG_RS_COMPACT_PROMPT                                                                                  \
	"Compact the conversation above for another model that will continue it in your place. Write a "      \
	"handoff summary: the task and the user's goals and constraints, what has been done and found, the "   \
	"current state (files, commands, decisions, open questions) and what remains to do, with every detail " \
	"needed to continue. Reply with the summary only."

/* a then b (both esc) in the arena; .p NULL when out of memory */
static lg_str lg_canon_cat(struct lg_req *r, lg_str a, lg_str b)
{
	char *o = (char *)lg_arena_alloc(&r->a, a.n + b.n + 1);
	if (!o) return lg_str_of(NULL, 0);
	memcpy(o, a.p, a.n);
	memcpy(o + a.n, b.p, b.n);
	o[a.n + b.n] = 0;
	return lg_str_of(o, a.n + b.n);
}

/* A namespaced tool's name as the upstream sees it: NS__NAME (esc). */
static lg_str lg_canon_rs_nsname(struct lg_req *r, lg_str ns, lg_str name)
{
	char *o;
	if (!ns.n) return name;
	if (!(o = (char *)lg_arena_alloc(&r->a, ns.n + name.n + 3))) return name;
	memcpy(o, ns.p, ns.n);
	memcpy(o + ns.n, "__", 2);
	memcpy(o + ns.n + 2, name.p, name.n);
	o[ns.n + name.n + 2] = 0;
	return lg_str_of(o, ns.n + name.n + 2);
}

/* One Responses tool into q->tools: a function; a custom tool (free-text
 * input, maybe a grammar) as a function of one string "input"; a namespace
 * group's tools as functions named NS__NAME. Any other type is hosted:
 * left out, its type named once in dr (",a,b,"). 0, or -1 out of memory. */
static int lg_canon_rs_tool(struct lg_req *r, struct lg_creq *q, int e, lg_str ns, struct lg_buf *dr)
{
	const struct lg_json *j = &r->j;
	const char *s = r->body;
	lg_str ty = lg_jesc(j, s, lg_json_get(j, s, e, "type"));
	struct lg_ctool *tl = &q->tools[q->ntools];
	int pa = lg_json_get(j, s, e, "parameters");
	if (lg_str_eq(ty, "namespace") && !ns.n) {
		int g = lg_json_get(j, s, e, "tools");
		lg_str nm = lg_jesc(j, s, lg_json_get(j, s, e, "name"));
		uint32_t i;
		for (i = 0; nm.n && lg_json_type(j, g) == LG_J_ARR && i < j->t[g].size; i++)
			if (lg_canon_rs_tool(r, q, lg_json_at(j, g, i), nm, dr) < 0) return -1;
		return 0;
	}
	if (!lg_str_eq(ty, "function") && !lg_str_eq(ty, "custom")) { /* its type, once, in what a header can carry */
		char nm[44];
		size_t x, nl = 0;
		if (!ty.n) ty = lg_strz("unknown");
		nm[nl++] = ',';
		for (x = 0; x < ty.n && nl < 41; x++)
			nm[nl++] = isalnum((unsigned char)ty.p[x]) || (ty.p[x] && strchr("_.-", ty.p[x])) ? ty.p[x] : '_';
		nm[nl++] = ',';
		nm[nl] = 0;
		if (lg_buf_addc(dr, 0)) return 0; /* full: the header names what fits */
		dr->len--;
		if (!strstr(dr->p, nm)) lg_buf_add(dr, nm + 1, nl - 1);
		return 0;
	}
	memset(tl, 0, sizeof *tl);
	tl->name = lg_jesc(j, s, lg_json_get(j, s, e, "name"));
	tl->desc = lg_jesc(j, s, lg_json_get(j, s, e, "description"));
	if (!tl->name.n) return 0;
	tl->ns = ns;
	tl->bare = tl->name;
	tl->name = lg_canon_rs_nsname(r, ns, tl->name);
	if (lg_str_eq(ty, "custom")) { /* the grammar goes in the description: the model writes to it */
		int f = lg_json_get(j, s, e, "format");
		lg_str def = lg_jesc(j, s, lg_json_get(j, s, f, "definition"));
		lg_str syn = lg_jesc(j, s, lg_json_get(j, s, f, "syntax"));
		tl->custom = 1;
		tl->schema = lg_strz("{\"type\":\"object\",\"properties\":{\"input\":{\"type\":\"string\",\"description\":"
		                     "\"the tool's whole input, as free text (not JSON)\"}},\"required\":[\"input\"],"
		                     "\"additionalProperties\":false}");
		if (def.n) {
			struct lg_buf b;
			lg_buf_init(&b, 0);
			lg_buf_adds(&b, tl->desc);
			lg_buf_addz(&b, "\\n\\nPut the whole input in the string parameter \\\"input\\\"; it must match this ");
			lg_buf_adds(&b, syn.n ? syn : lg_strz("lark"));
			lg_buf_addz(&b, " grammar:\\n");
			lg_buf_adds(&b, def);
			if (!b.err) tl->desc = lg_str_of(lg_arena_strn(&r->a, b.p, b.len), b.len);
			lg_buf_free(&b);
			if (!tl->desc.p) return -1;
		}
	} else {
		tl->schema = pa >= 0 ? lg_json_span(j, s, pa) : lg_str_of("{\"type\":\"object\"}", 17);
	}
	q->ntools++;
	return 0;
}

/* OpenAI Responses body -> canonical. Stateless: previous_response_id is
 * refused. instructions and system/developer items become the system
 * parts; consecutive items of one role one message (function_call items
 * the assistant turn's tool calls, function_call_output items tool results
 * in the user turn); a reasoning item's summary rides as thinking on the
 * assistant turn that follows it (encrypted_content as its signature).
 * Hosted tools are left out, their types named in r->dropped. */
static int lg_canon_responses(struct lg_req *r, struct lg_creq *q, char *msg, size_t mlen)
{
	const struct lg_json *j = &r->j;
	const char *s = r->body;
	int in = r->tk[LG_TK_INPUT], t, k, role = -1, pending = -1;
	uint32_t i, n, pool_n, used = 0;
	struct lg_cpart *pool;
	struct lg_cmsg *m = NULL;
	t = r->tk[LG_TK_PREV_RESPONSE];
	if (t >= 0 && lg_json_type(j, t) != LG_J_NULL) {
		snprintf(msg, mlen, "field 'previous_response_id' is not supported: llmgw keeps no responses (store is "
		                    "ignored); send the whole conversation in 'input'");
		return -2;
	}
	if (lg_json_type(j, in) != LG_J_STR && lg_json_type(j, in) != LG_J_ARR) {
		snprintf(msg, mlen, "field 'input' must be a string or an array of items");
		return -2;
	}
	n = lg_json_type(j, in) == LG_J_ARR ? j->t[in].size : 1;
	/* every part comes from a token of input: one pool, each message's parts a run of it */
	pool_n = j->t[in].next - (uint32_t)in + 2;
	q->m = (struct lg_cmsg *)lg_arena_alloc(&r->a, (n + 1) * sizeof *q->m);
	q->sys = (struct lg_cpart *)lg_arena_alloc(&r->a, (size_t)pool_n * sizeof *q->sys);
	pool = (struct lg_cpart *)lg_arena_alloc(&r->a, (size_t)pool_n * sizeof *pool);
	if (!q->m || !q->sys || !pool) return -1;
	t = r->tk[LG_TK_INSTRUCTIONS];
	if (lg_json_type(j, t) == LG_J_STR && j->t[t].end > j->t[t].start) {
		q->sys[q->nsys].type = LG_P_TEXT;
		q->sys[q->nsys++].text = lg_json_raw(j, s, t);
	}
	if (lg_json_type(j, in) == LG_J_STR) {
		m = &q->m[q->nm++];
		m->role = LG_R_USER;
		m->p = pool;
		if (lg_canon_rs_content(r, m, (int)pool_n, in, 1, 0, msg, mlen) < 0) return -2;
		n = 0;
	}
	for (i = 0; i < n; i++) {
		int e = lg_json_at(j, in, i), want, c = lg_json_get(j, s, e, "content");
		lg_str ty = lg_jesc(j, s, lg_json_get(j, s, e, "type"));
		lg_str rl = lg_jesc(j, s, lg_json_get(j, s, e, "role"));
		struct lg_cpart *p;
		if (lg_json_type(j, e) != LG_J_OBJ) {
			snprintf(msg, mlen, "input[%u] must be an object", i);
			return -2;
		}
		if (!ty.n || lg_str_eq(ty, "message")) {
			if (lg_str_eq(rl, "system") || lg_str_eq(rl, "developer")) {
				struct lg_cmsg tmp;
				memset(&tmp, 0, sizeof tmp);
				tmp.p = q->sys + q->nsys;
				if ((k = lg_canon_rs_content(r, &tmp, (int)pool_n - q->nsys, c, 0, i, msg, mlen)) < 0) return k;
				q->nsys += tmp.np;
				continue;
			}
			if (!lg_str_eq(rl, "user") && !lg_str_eq(rl, "assistant")) {
				snprintf(msg, mlen, "input[%u].role must be user, assistant, system or developer", i);
				return -2;
			}
			want = lg_str_eq(rl, "user") ? LG_R_USER : LG_R_ASSISTANT;
		} else if (lg_str_eq(ty, "function_call") || lg_str_eq(ty, "custom_tool_call")) {
			want = LG_R_ASSISTANT;
		} else if (lg_str_eq(ty, "function_call_output") || lg_str_eq(ty, "custom_tool_call_output")) {
			want = LG_R_USER;
		} else if (lg_str_eq(ty, "reasoning")) {
			pending = e; /* for the assistant turn that follows */
			continue;
		} else if (lg_str_eq(ty, "compaction_trigger")) { /* compact what came before (the prompt below) */
			r->compact = 1;
			continue;
		} else if (lg_str_eq(ty, "compaction")) { /* llmgw's own summary comes back as a user turn */
			lg_str ec = lg_jesc(j, s, lg_json_get(j, s, e, "encrypted_content"));
			if (ec.n < sizeof LG_RS_SUMMARY - 1 || memcmp(ec.p, LG_RS_SUMMARY, sizeof LG_RS_SUMMARY - 1)) {
				lg_canon_drop(r, "compaction"); /* another service's: only it can read it */
				continue;
			}
			want = LG_R_USER;
		} else if (lg_str_eq(ty, "item_reference")) {
			snprintf(msg, mlen, "input[%u]: item_reference is not supported: llmgw keeps no responses", i);
			return -2;
		} else {
			continue; /* hosted tool calls and their outputs: their tools are not sent either */
		}
		/* a new message when the role changes, or a tool result follows user text */
		if (!m || want != role ||
		    (ty.n > 12 && !memcmp(ty.p + ty.n - 12, "_call_output", 12) && m->np &&
		     m->p[m->np - 1].type != LG_P_TOOL_RESULT)) {
			if (m) used += (uint32_t)m->np;
			m = &q->m[q->nm++];
			m->role = role = want;
			m->p = pool + used;
		}
		if (want == LG_R_ASSISTANT && pending >= 0) { /* the reasoning item before this turn */
			int sm = lg_json_get(j, s, pending, "summary");
			lg_str tx = lg_canon_rs_join(r, sm, "text", "\\n\\n");
			if (tx.n) {
				if (!(p = lg_canon_part(r, m, (int)(pool_n - used), LG_P_THINKING))) return -1;
				p->text = tx;
				p->sig = lg_jesc(j, s, lg_json_get(j, s, pending, "encrypted_content"));
			}
		}
		pending = -1; /* a reasoning item stays with the item that follows it, or is dropped */
		if (!ty.n || lg_str_eq(ty, "message")) {
			if ((k = lg_canon_rs_content(r, m, (int)(pool_n - used), c, want == LG_R_USER, i, msg, mlen)) < 0)
				return k;
		} else if (lg_str_eq(ty, "compaction")) {
			lg_str ec = lg_jesc(j, s, lg_json_get(j, s, e, "encrypted_content"));
			if (!(p = lg_canon_part(r, m, (int)(pool_n - used), LG_P_TEXT))) return -1;
			p->text = lg_canon_cat(r, lg_strz("A summary of the conversation before this point (it was compacted):\\n\\n"),
			                       lg_str_of(ec.p + sizeof LG_RS_SUMMARY - 1, ec.n - (sizeof LG_RS_SUMMARY - 1)));
			if (!p->text.p) return -1;
		} else if (lg_str_eq(ty, "function_call")) {
			lg_str a = lg_jesc(j, s, lg_json_get(j, s, e, "arguments"));
			struct lg_json aj;
			lg_str tr;
			if (!(p = lg_canon_part(r, m, (int)(pool_n - used), LG_P_TOOL_CALL))) return -1;
			p->id = lg_jesc(j, s, lg_json_get(j, s, e, "call_id"));
			if (!p->id.n) p->id = lg_jesc(j, s, lg_json_get(j, s, e, "id"));
			p->name = lg_canon_rs_nsname(r, lg_jesc(j, s, lg_json_get(j, s, e, "namespace")),
			                             lg_jesc(j, s, lg_json_get(j, s, e, "name")));
			p->args = a.n ? lg_canon_unesc(r, a) : lg_str_of("{}", 2);
			/* arguments must be a JSON object to become input/args */
			tr = lg_str_trim(p->args);
			memset(&aj, 0, sizeof aj);
			if (!tr.n || tr.p[0] != '{' || lg_json_parse(&aj, p->args.p, p->args.n) <= 0) p->args = lg_str_of("{}", 2);
		} else if (lg_str_eq(ty, "custom_tool_call")) { /* its input as the one string argument */
			lg_str in_ = lg_json_raw(j, s, lg_json_get(j, s, e, "input"));
			char *a;
			if (!(p = lg_canon_part(r, m, (int)(pool_n - used), LG_P_TOOL_CALL))) return -1;
			if (!(a = (char *)lg_arena_alloc(&r->a, in_.n + 14))) return -1;
			p->id = lg_jesc(j, s, lg_json_get(j, s, e, "call_id"));
			p->name = lg_canon_rs_nsname(r, lg_jesc(j, s, lg_json_get(j, s, e, "namespace")),
			                             lg_jesc(j, s, lg_json_get(j, s, e, "name")));
			memcpy(a, "{\"input\":\"", 10);
			memcpy(a + 10, in_.p, in_.n);
			memcpy(a + 10 + in_.n, "\"}", 3);
			p->args = lg_str_of(a, in_.n + 12);
		} else {
			int out = lg_json_get(j, s, e, "output");
			if (!(p = lg_canon_part(r, m, (int)(pool_n - used), LG_P_TOOL_RESULT))) return -1;
			p->id = lg_jesc(j, s, lg_json_get(j, s, e, "call_id"));
			p->text = lg_json_type(j, out) == LG_J_STR ? lg_json_raw(j, s, out) : lg_canon_rs_join(r, out, "text", "\\n");
		}
	}
	if (r->compact) { /* the summary is the answer: asked for as the last user turn, no tool calls */
		struct lg_cpart *cp;
		if (!m || role != LG_R_USER) {
			if (m) used += (uint32_t)m->np;
			m = &q->m[q->nm++];
			m->role = role = LG_R_USER;
			m->p = pool + used;
			m->np = 0;
		}
		if (!(cp = lg_canon_part(r, m, (int)(pool_n - used), LG_P_TEXT))) return -1;
		cp->text = lg_strz(LG_RS_COMPACT_PROMPT);
	}
	/* tools: functions in the flat form, custom tools, namespace groups;
	 * hosted ones (web_search...) dropped and named */
	t = lg_json_get(j, s, 0, "tools");
	if (lg_json_type(j, t) == LG_J_ARR && j->t[t].size) {
		struct lg_buf dr; /* ",type,type," */
		q->tools = (struct lg_ctool *)lg_arena_alloc(&r->a, (j->t[t].next - (uint32_t)t) * sizeof *q->tools);
		if (!q->tools) return -1;
		lg_buf_init(&dr, 512);
		lg_buf_addc(&dr, ',');
		for (i = 0; i < j->t[t].size; i++)
			if (lg_canon_rs_tool(r, q, lg_json_at(j, t, i), lg_str_of("", 0), &dr) < 0) {
				lg_buf_free(&dr);
				return -1;
			}
		if (dr.len > 2) r->dropped = lg_arena_strn(&r->a, dr.p + 1, dr.len - 2);
		lg_buf_free(&dr);
	}
	t = r->compact ? -1 : lg_json_get(j, s, 0, "tool_choice");
	if (r->compact) q->tool_choice = LG_TC_NONE; /* the summary is the answer */
	if (lg_json_type(j, t) == LG_J_STR) {
		lg_str v = lg_json_raw(j, s, t);
		q->tool_choice = lg_str_eq(v, "none") ? LG_TC_NONE : lg_str_eq(v, "required") ? LG_TC_REQUIRED : LG_TC_AUTO;
	} else if (lg_json_type(j, t) == LG_J_OBJ) {
		q->tool_name = lg_jesc(j, s, lg_json_get(j, s, t, "name"));
		/* {type:function,name}; a hosted tool's choice went with the tool */
		lg_str ty = lg_jesc(j, s, lg_json_get(j, s, t, "type"));
		q->tool_choice = (lg_str_eq(ty, "function") || lg_str_eq(ty, "custom")) && q->tool_name.n ? LG_TC_FUNC
		                                                                                          : LG_TC_AUTO;
	}
	t = lg_json_get(j, s, 0, "parallel_tool_calls");
	q->parallel = lg_json_type(j, t) == LG_J_TRUE ? 1 : lg_json_type(j, t) == LG_J_FALSE ? 0 : -1;
	q->max_tokens = lg_json_i64(j, s, r->tk[LG_TK_MAX_OUTPUT_TOKENS]);
	q->temperature = lg_jnum(j, s, lg_json_get(j, s, 0, "temperature"));
	q->top_p = lg_jnum(j, s, lg_json_get(j, s, 0, "top_p"));
	q->user = lg_jesc(j, s, r->tk[LG_TK_USER]);
	t = lg_json_get(j, s, lg_json_get(j, s, 0, "text"), "format");
	if (lg_json_type(j, t) == LG_J_OBJ) {
		lg_str ty = lg_jesc(j, s, lg_json_get(j, s, t, "type"));
		if (lg_str_eq(ty, "json_object")) q->rf = 1;
		if (lg_str_eq(ty, "json_schema")) {
			int sc = lg_json_get(j, s, t, "schema");
			q->rf = 2;
			if (sc >= 0) q->rf_schema = lg_json_span(j, s, sc);
			q->rf_name = lg_jesc(j, s, lg_json_get(j, s, t, "name"));
			q->rf_strict = lg_json_truthy(j, lg_json_get(j, s, t, "strict"));
		}
		if (q->rf) { /* for providers without structured output: a forced tool whose input is the answer */
			q->rf_tool.name = lg_strz(LG_RF_TOOL);
			q->rf_tool.desc = lg_strz("Answer with JSON");
			q->rf_tool.schema = q->rf_schema.n ? q->rf_schema : lg_strz("{\"type\":\"object\"}");
		}
	}
	t = lg_json_get(j, s, lg_json_get(j, s, 0, "reasoning"), "effort");
	if (lg_json_type(j, t) == LG_J_STR) {
		q->effort = lg_json_raw(j, s, t);
		q->thinking = lg_canon_effort(q->effort);
	}
	return 0;
}

/* The canonical request, built once on first need. NULL: answered (400). */
static struct lg_creq *lg_canon(struct lg_req *r)
{
	char msg[300];
	int k;
	if (r->creq) return r->creq;
	if (!(r->creq = (struct lg_creq *)lg_arena_alloc(&r->a, sizeof *r->creq))) return NULL;
	msg[0] = 0;
	k = r->d->canon(r, r->creq, msg, sizeof msg);
	if (k < 0) {
		snprintf(r->canon_err, sizeof r->canon_err, "%s", msg[0] ? msg : "out of memory");
		r->creq = NULL;
		return NULL;
	}
	return r->creq;
}

/* --- 11c. canonical events: the contract between adapters and dialects --- */

/* Provider adapters turn a response or stream into these events; the
 * client's dialect row turns them into OpenAI chunks, Anthropic events or
 * Responses events (or, not streaming, collects them into one answer), so
 * N providers and M dialects need N + M pieces, not N x M.
 * lg_ev(r, type, idx, a, b, raw)
 * takes one; lg_ev_acct is its accounting half, which native traffic (the
 * client's bytes passed through) calls alone.
 *
 *   type             idx                     a                    b
 *   LG_EV_TEXT       tokens counted, or 0    text (esc)           -
 *   LG_EV_REASONING  tokens counted, or 0    reasoning (esc)      -
 *   LG_EV_SIG        0                       its signature (esc)  -
 *   LG_EV_TOOL       the provider's index    call id (esc)        name (esc)
 *                    for the call (Gemini: 1000 + part number)
 *   LG_EV_ARGS       that provider index     arguments (esc; raw JSON when raw = 1)
 *   LG_EV_FINISH     LG_FIN_ code            -                    -
 *   LG_EV_USAGE      0 (r->usage was filled) -                    -
 *   LG_EV_ERROR      HTTP status it means    message (esc)        -
 *   LG_EV_END        0                       -                    -
 *
 * Accounting, for every event: USAGE prices r->usage; TEXT, REASONING and
 * ARGS add to the estimated output (idx tokens, else a token per 4 bytes);
 * FINISH and END say the answer is complete; ERROR records status,
 * reason and retryability (429, 5xx) in r->err_* and r->up_error. The
 * attempt logic acts on a recorded error after the parser returns: before
 * the client's first byte the attempt failed (the router may try the
 * next); after it, the stream ends with the dialect's error event. After
 * END or an error nothing more is accounted or written (USAGE still is). */
enum { LG_EV_TEXT, LG_EV_REASONING, LG_EV_SIG, LG_EV_TOOL, LG_EV_ARGS, LG_EV_FINISH, LG_EV_USAGE, LG_EV_ERROR,
       LG_EV_END };
enum { LG_FIN_STOP, LG_FIN_LENGTH, LG_FIN_TOOLS, LG_FIN_FILTER };
static const char lg_fin_openai[][15] = {"stop", "length", "tool_calls", "content_filter"};
static const char lg_fin_anthropic[][11] = {"end_turn", "max_tokens", "tool_use", "refusal"};

#define LG_NOSTR lg_str_of("", 0)

/* A provider's finish reason as an LG_FIN_ code. */
static int lg_fin_code(lg_str v)
{
	static const char len[][30] = {"length", "max_tokens", "MAX_TOKENS", "model_context_window_exceeded",
	                                  "model_length"};
	static const char tools[][14] = {"tool_calls", "tool_use", "function_call"};
	static const char filt[][21] = {"content_filter", "refusal", "SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST",
	                                   "SPII", "IMAGE_SAFETY", "RECITATION", "guardrail_intervened",
	                                   "content_filtered"};
	size_t i;
	for (i = 0; i < LG_COUNTOF(len); i++)
		if (lg_str_eq(v, len[i])) return LG_FIN_LENGTH;
	for (i = 0; i < LG_COUNTOF(tools); i++)
		if (lg_str_eq(v, tools[i])) return LG_FIN_TOOLS;
	for (i = 0; i < LG_COUNTOF(filt); i++)
		if (lg_str_eq(v, filt[i])) return LG_FIN_FILTER;
	return LG_FIN_STOP;
}

/* An error event: status, reason and retryability recorded for the attempt logic. */
static LG_COLD void lg_ev_error(struct lg_req *r, int status, lg_str a)
{
	char raw[sizeof r->err_reason];
	long k;
	r->up_error = 1;
	r->err_status = status;
	r->err_retry = status == 429 || status >= 500;
	/* a is JSON-escaped (the event contract): kept as text, since every writer escapes it again */
	a.n = LG_MIN(a.n, sizeof raw - 1);
	while (a.n && a.p[a.n - 1] == '\\') a.n--; /* an escape cut in half */
	k = lg_json_unescape(a.p, a.n, raw);
	if (k < 0) {
		memcpy(raw, a.p, a.n);
		k = (long)a.n;
	}
	lg_scrub_cpy(r->cfg, r->err_reason, sizeof r->err_reason, raw, (size_t)k); /* it may quote the credential */
	snprintf(r->errmsg, sizeof r->errmsg, "provider %s: %s", r->served->prov->name, r->err_reason);
}

/* The accounting half of lg_ev; 1 when the event is still to be written.
 * It runs for every event of every stream: the error case is outlined. */
static int lg_ev_acct(struct lg_req *r, int type, int idx, lg_str a)
{
	switch (type) {
	case LG_EV_USAGE:
		r->usage.seen = 1;
		r->usage.cost = lg_acct_cost(r->served ? r->served->t : NULL, &r->usage);
		return 0;
	case LG_EV_TEXT:
	case LG_EV_REASONING: r->est_out += idx > 0 ? idx : ((int64_t)a.n + 3) / 4; break;
	case LG_EV_ARGS: r->est_out += ((int64_t)a.n + 3) / 4; break;
	default: break;
	}
	if (r->up_error || r->stream_done || r->finished) return 0;
	if (type == LG_EV_FINISH) r->saw_finish = 1;
	if (type == LG_EV_END) r->stream_done = 1;
	if (type == LG_EV_ERROR) {
		lg_ev_error(r, idx, a);
		return 0;
	}
	return 1;
}

#define LG_MAX_TOOLS 64

struct lg_acc_tool {
	lg_str id, name; /* esc, in the request's arena */
	struct lg_buf args; /* esc */
	int pidx;        /* the provider's index for it */
};

#define LG_RS_ITEMS (LG_MAX_TOOLS + 16) /* output items of one Responses stream, at most */

/* One output item of a Responses stream: a message (LG_EV_TEXT), a
 * reasoning item or a function call (LG_EV_TOOL), and where its text is. */
struct lg_rs_item {
	int kind, tool, open; /* tool: its index in w->tools */
	uint32_t off, len;    /* its text in w->text or w->reasoning */
	uint32_t soff, slen;  /* a reasoning item's signature in w->sig */
};

/* Writer state: the client side of a translated response. */
struct lg_wst {
	int started, finish, has_finish, block, block_type, nblocks, ntools;
	struct lg_acc_tool tools[LG_MAX_TOOLS];
	struct lg_buf text, reasoning, sig; /* non-stream: collected, esc (Responses streams too) */
	/* provider parser state */
	int pblk[LG_MAX_TOOLS], pargs[LG_MAX_TOOLS], calls;
	/* the Responses dialect's stream: the next sequence_number, its output
	 * items (the open one, if any, is the last; grown on demand, freed by
	 * lg_d_free) */
	int seq, nitems, items_cap;
	struct lg_rs_item *items;
	int64_t last_event; /* a translated Anthropic stream's last event (its ping timer) */
};

/* The writing half: to the client's dialect, or collected. */
static void lg_ev_write(struct lg_req *r, int type, int idx, lg_str a, lg_str b, int raw)
{
	if (type == LG_EV_FINISH) {
		r->w->finish = idx;
		r->w->has_finish = 1;
	}
	if (!r->stream)
		lg_d_collect(r, type, idx, a, b, raw);
	else
		r->d->stream(r, type, idx, a, b, raw);
}

/* One canonical event from an adapter (the table above). Text that is not
 * well-formed UTF-8 has each bad sequence replaced by U+FFFD before it is
 * written: what llmgw writes is always valid UTF-8 JSON. */
static void lg_ev(struct lg_req *r, int type, int idx, lg_str a, lg_str b, int raw)
{
	struct lg_buf fa, fb;
	if (!lg_ev_acct(r, type, idx, a) || !r->w) return;
	if ((!a.n || lg_utf8_valid(a.p, a.n)) && (!b.n || lg_utf8_valid(b.p, b.n))) {
		lg_ev_write(r, type, idx, a, b, raw);
		return;
	}
	a = lg_utf8_fix(&fa, a);
	b = lg_utf8_fix(&fb, b);
	lg_ev_write(r, type, idx, a, b, raw);
	lg_buf_free(&fa);
	lg_buf_free(&fb);
}

/* Is p native to the client's dialect (the client's bytes go as they are)? */
static int lg_native(const struct lg_req *r, const struct lg_provider *p)
{
	return p->row->wire == r->d->wire || (r->d->wire == LG_WIRE_RESPONSES && p->responses);
}

/* Copies the JSON object at token t of s, with "model" replaced by the
 * public name, "provider" first, and extra text added at its end. */
static void lg_native_obj(struct lg_req *r, const struct lg_json *j, const char *s, int t, struct lg_buf *o,
                          int top, const char *extra)
{
	struct lg_jit it = lg_json_iter(j, t);
	int first = !top;
	lg_buf_addc(o, '{');
	if (top) {
		lg_buf_addz(o, "\"provider\":");
		lg_json_wz(o, r->served->prov->name);
	}
	while (lg_json_next(j, &it)) {
		lg_str key = lg_json_raw(j, s, it.key);
		if (top && lg_str_eq(key, "provider")) continue;
		if (!first) lg_buf_addc(o, ',');
		first = 0;
		lg_buf_adds(o, lg_json_span(j, s, it.key));
		lg_buf_addc(o, ':');
		if (lg_str_eq(key, "model")) {
			lg_json_wz(o, r->served->model);
		} else if (lg_str_eq(key, "usage") && j->t[it.val].type == LG_J_OBJ) {
			char c[64];
			memcpy(c, ",\"cost\":", 8);
			lg_fmt_g(c + 8, r->usage.cost, 12);
			lg_native_obj(r, j, s, it.val, o, 0, j->t[it.val].size ? c : c + 1);
		} else if ((lg_str_eq(key, "message") || lg_str_eq(key, "response")) && j->t[it.val].type == LG_J_OBJ) {
			lg_native_obj(r, j, s, it.val, o, 0, NULL); /* Anthropic message_start, a Responses event */
		} else {
			lg_buf_adds(o, lg_json_span(j, s, it.val));
		}
	}
	if (extra) lg_buf_addz(o, extra);
	lg_buf_addc(o, '}');
}

/* A native stream event to the client. The opening events (hold: the
 * Responses API's response.created / in_progress, Anthropic's
 * message_start) wait in the arena until an event with content comes, so
 * an error that comes before any content is still a failed attempt the
 * router can retry elsewhere; error: such an error (dropped while nothing
 * went out, else written). */
static void lg_native_send(struct lg_req *r, const char *name, const char *data, size_t n, int hold, int error)
{
	int i;
	if (!r->sent_head && error) return; /* the attempt failed: nothing of it reached the client */
	if (!r->sent_head && hold && r->nheld < (int)LG_COUNTOF(r->held)) {
		struct lg_held *h = &r->held[r->nheld];
		h->name = name ? lg_arena_strn(&r->a, name, strlen(name)) : NULL;
		h->data = lg_arena_strn(&r->a, data, n);
		h->n = n;
		if (h->data && (h->name || !name)) {
			r->nheld++;
			return;
		}
	}
	for (i = 0; i < r->nheld; i++) lg_resp_sse(r, r->held[i].name, r->held[i].data, r->held[i].n);
	r->nheld = 0;
	lg_resp_sse(r, name, data, n);
}

/* An event to the parser that owns it: the dialect's native rewriter, or
 * the provider's translating parser. */
static LG_INLINE void lg_ev_in(struct lg_req *r, lg_str ev, lg_str data)
{
	if (!r->native)
		r->served->prov->row->event(r, ev, data);
	else
		r->d->native_event(r, ev, data);
}

/* --- 11d. the upstream request: head, auth room, body helpers, stream framing --- */

static void lg_w_str(struct lg_buf *o, lg_str esc)
{
	lg_buf_addc(o, '"');
	lg_buf_adds(o, esc);
	lg_buf_addc(o, '"');
}

/* Is this esc text only whitespace (Anthropic rejects such stop sequences)? */
static int lg_w_blank(lg_str esc)
{
	size_t i;
	for (i = 0; i < esc.n; i++) {
		if (esc.p[i] == ' ') continue;
		if (esc.p[i] == '\\' && i + 1 < esc.n && strchr("ntr", esc.p[i + 1])) {
			i++;
			continue;
		}
		return 0;
	}
	return 1;
}

static const char *lg_w_num_or(lg_str v, char *buf, size_t n, double maxv)
{
	double d;
	if (!v.n || v.n >= n) return NULL;
	memcpy(buf, v.p, v.n);
	buf[v.n] = 0;
	d = strtod(buf, NULL);
	if (maxv > 0 && d > maxv) snprintf(buf, n, "%g", maxv); /* e.g. Anthropic's 0..1 temperature */
	return buf;
}

static int64_t lg_w_max_tokens(const struct lg_cand *cd, const struct lg_creq *q)
{
	if (q->max_tokens) return q->max_tokens;
	if (cd->t && cd->t->max_output) return cd->t->max_output;
	return 4096;
}

/* Does the history use tools when none are declared? (Anthropic refuses.) */
static int lg_w_has_calls(const struct lg_creq *q)
{
	int i, k;
	for (i = 0; i < q->nm; i++)
		for (k = 0; k < q->m[i].np; k++)
			if (q->m[i].p[k].type == LG_P_TOOL_CALL) return 1;
	return 0;
}

/* How a provider spells a tool declaration around its name, description
 * and JSON Schema, and which tools it declares besides the request's. */
struct lg_w_spell {
	char open[40], desc[18], schema[26], close[4]; /* arrays, not pointers: no relocations */
	int rf;      /* response_format goes as the forced tool q->rf_tool (when the request has no tools) */
	int history; /* no tools declared but the history calls some: declare those (with rf too: 2) */
	int clean;   /* schemas in the OpenAPI subset (lg_w_schema) */
};

static void lg_w_schema(struct lg_req *r, struct lg_buf *o, lg_str raw);

static void lg_w_tool(struct lg_req *r, struct lg_buf *o, const struct lg_w_spell *sp, int n, lg_str name, lg_str desc,
                      lg_str schema)
{
	if (n) lg_buf_addc(o, ',');
	lg_buf_addz(o, sp->open);
	lg_w_str(o, name);
	if (desc.n) {
		lg_buf_addz(o, sp->desc);
		lg_w_str(o, desc);
	}
	lg_buf_addz(o, sp->schema);
	if (sp->clean)
		lg_w_schema(r, o, schema);
	else
		lg_buf_adds(o, schema);
	lg_buf_addz(o, sp->close);
}

/* The tool declarations, comma-separated: the forced response_format tool
 * (r->rf_tool says whether it went), the request's tools, the history's.
 * Returns how many. */
static int lg_w_tools(struct lg_req *r, struct lg_buf *o, const struct lg_w_spell *sp)
{
	const struct lg_creq *q = r->creq;
	int i, k, n = 0;
	r->rf_tool = sp->rf && q->rf && !q->ntools;
	if (r->rf_tool) lg_w_tool(r, o, sp, n++, q->rf_tool.name, q->rf_tool.desc, q->rf_tool.schema);
	for (i = 0; i < q->ntools; i++) lg_w_tool(r, o, sp, n++, q->tools[i].name, q->tools[i].desc, q->tools[i].schema);
	if (sp->history && !q->ntools && (!r->rf_tool || sp->history == 2))
		for (i = 0; i < q->nm; i++)
			for (k = 0; k < q->m[i].np; k++)
				if (q->m[i].p[k].type == LG_P_TOOL_CALL)
					lg_w_tool(r, o, sp, n++, q->m[i].p[k].name, LG_NOSTR, lg_strz("{\"type\":\"object\"}"));
	return n;
}

/* The system parts: head, then each as item + text + '}', then tail
 * (nothing without a system prompt); fold: the system entries inside the
 * messages too, in their order, after the system prompt. */
static void lg_w_system(struct lg_buf *o, const struct lg_creq *q, const char *head, const char *item,
                        const char *tail, int fold)
{
	int i, k, n = 0;
	for (i = 0; i < q->nsys + (fold ? q->nm : 0); i++) {
		const struct lg_cpart *p = i < q->nsys ? &q->sys[i] : NULL;
		const struct lg_cmsg *m = i < q->nsys ? NULL : &q->m[i - q->nsys];
		int np = p ? 1 : m->role == LG_R_SYSTEM ? m->np : 0;
		for (k = 0; k < np; k++) {
			const struct lg_cpart *x = p ? p : &m->p[k];
			if (x->type != LG_P_TEXT) continue;
			lg_buf_addz(o, n++ ? "," : head);
			lg_buf_addz(o, item);
			lg_w_str(o, x->text);
			lg_buf_addc(o, '}');
		}
	}
	if (n) lg_buf_addz(o, tail);
}

/* The stop sequences as ,"key":[...] (at most max; blank ones left out when skip_blank). */
static void lg_w_stops(struct lg_buf *o, const struct lg_creq *q, const char *key, int max, int skip_blank)
{
	int i, c = 0;
	if (!q->nstop) return;
	lg_buf_addz(o, key);
	for (i = 0; i < q->nstop && i < max; i++) {
		if (skip_blank && lg_w_blank(q->stop[i])) continue;
		if (c++) lg_buf_addc(o, ',');
		lg_w_str(o, q->stop[i]);
	}
	lg_buf_addc(o, ']');
}

/* Turns: the messages from i on that share its role, across system
 * entries (folded into the system instructions; the providers that want
 * roles to alternate get them merged). Returns the end of the run. */
static int lg_w_turn(const struct lg_creq *q, int i)
{
	int end = i;
	while (end < q->nm && (q->m[end].role == q->m[i].role || q->m[end].role == LG_R_SYSTEM)) end++;
	return end;
}

/* The parts of a turn [from, to), one per call (NULL at the end): it->k
 * and it->x start at 0. */
struct lg_w_pit {
	int k, x;
};

static const struct lg_cpart *lg_w_part(const struct lg_creq *q, int from, int to, struct lg_w_pit *it)
{
	if (it->k < from) it->k = from, it->x = 0;
	while (it->k < to) {
		if (it->x < q->m[it->k].np && q->m[it->k].role != LG_R_SYSTEM) return &q->m[it->k].p[it->x++];
		it->k++;
		it->x = 0;
	}
	return NULL;
}

static lg_str lg_w_call_name(const struct lg_creq *q, lg_str id)
{
	int i, k;
	for (i = 0; i < q->nm; i++)
		for (k = 0; k < q->m[i].np; k++)
			if (q->m[i].p[k].type == LG_P_TOOL_CALL && q->m[i].p[k].id.n == id.n &&
			    memcmp(q->m[i].p[k].id.p, id.p, id.n) == 0)
				return q->m[i].p[k].name;
	return lg_str_of("unknown_function", 16);
}

static const char *lg_w_mime_of(lg_str url)
{
	if (url.n > 4 && lg_str_ieqs(lg_str_of(url.p + url.n - 4, 4), lg_str_of(".png", 4))) return "image/png";
	if (url.n > 4 && lg_str_ieqs(lg_str_of(url.p + url.n - 4, 4), lg_str_of(".gif", 4))) return "image/gif";
	if (url.n > 5 && lg_str_ieqs(lg_str_of(url.p + url.n - 5, 5), lg_str_of(".webp", 5))) return "image/webp";
	return "image/jpeg";
}

/* A translated stream's event as a JSON object in j: 1. Anything else
 * fails the attempt, or after the first byte ends the client's stream with
 * an error event (it must not end as if complete): 0, as does an empty one. */
static int lg_p_event_json(struct lg_req *r, struct lg_json *j, lg_str data)
{
	static const char msg[] = "the upstream sent a stream event that is not a JSON object";
	memset(j, 0, sizeof *j);
	if (!lg_str_trim(data).n) return 0;
	if (lg_req_json(r, j, data.p, data.n) > 0 && j->t[0].type == LG_J_OBJ) return 1;
	lg_ev(r, LG_EV_ERROR, 502, lg_str_of(msg, sizeof msg - 1), LG_NOSTR, 0);
	return 0;
}

/* RFC 3986 encoding of everything but unreserved characters. */
static void lg_uri_enc(struct lg_buf *o, const char *p, size_t n)
{
	static const char hx[] = "0123456789ABCDEF";
	size_t i;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~')
			lg_buf_addc(o, (char)c);
		else {
			lg_buf_addc(o, '%');
			lg_buf_addc(o, hx[c >> 4]);
			lg_buf_addc(o, hx[c & 15]);
		}
	}
}

/* May a failed answer succeed on retry? A quota that ran out (OpenAI's
 * insufficient_quota 429) will not come back; timeouts and 5xx may. */
static int lg_prov_retryable(int status, const char *body, size_t n)
{
	if (status == 429) return !(body && n && lg_memmem(body, n, "insufficient_quota"));
	return status == 408 || status >= 500;
}

/* The longest auth lines a request to p can carry (lg_prov_build sizes
 * the head with it, so no header is ever cut). */
static size_t lg_prov_auth_room(const struct lg_provider *p, const struct lg_req *r)
{
	size_t n = 64;
	if (p->api_key) n += strlen(p->api_key) + 32;
	if (r->anth_beta) n += strlen(r->anth_beta) + 20;
	if (p->row->auth_room) n += p->row->auth_room(p);
	return n;
}

/* A head written into a fixed span: at passes cap when a part did not fit
 * (the caller then fails the request; nothing is cut silently). */
struct lg_hw {
	char *p;
	size_t at, cap;
};

static void lg_hw_n(struct lg_hw *w, const char *s, size_t n)
{
	if (w->at + n <= w->cap) memcpy(w->p + w->at, s, n);
	w->at += n;
}

static void lg_hw_z(struct lg_hw *w, const char *s) { lg_hw_n(w, s, strlen(s)); }

/* "name value\r\n", or nothing without a value */
static void lg_hw_line(struct lg_hw *w, const char *name, const char *v)
{
	if (!v) return;
	lg_hw_z(w, name);
	lg_hw_z(w, v);
	lg_hw_n(w, "\r\n", 2);
}

/* pb as the path, or NULL when it could not be written */
static const char *lg_prov_path_of(struct lg_buf *pb) { return lg_buf_addc(pb, 0) ? NULL : pb->p; }

static void lg_prov_bearer_auth(struct lg_hw *w, const struct lg_req *r, const struct lg_provider *p,
                                const char *path, const char *body, size_t n)
{
	LG_UNUSED(r), LG_UNUSED(path), LG_UNUSED(body), LG_UNUSED(n);
	lg_hw_line(w, "Authorization: Bearer ", p->api_key);
}

/* Builds the whole upstream request in o: the body is written first, after
 * room left for the head, so it is copied once. -2: the request cannot go
 * to this provider (r->canon_err says why: a 400). */
static int lg_prov_build(struct lg_req *r, const struct lg_cand *cd, struct lg_buf *o)
{
	const struct lg_provider *p = cd->prov;
	const struct lg_prov_row *row = p->row;
	char fast[1024];
	const char *path, *host = p->hosthdr;
	int i, k = 0;
	size_t room, body_len;
	struct lg_buf pb;
	lg_buf_init(&pb, 0);
	if (!(path = row->path(r, cd, fast, sizeof fast, &pb))) {
		lg_buf_free(&pb);
		return -1;
	}
	/* the head is sized, never truncated: fixed parts, path, host, every
	 * header of the provider and the longest auth lines it can get */
	room = 512 + strlen(path) + strlen(host) + lg_prov_auth_room(p, r);
	for (i = 0; i < p->nheaders; i++) room += strlen(p->headers[i]) + 2;
	o->off = o->len = 0;
	lg_blk_take(r->gw, o);
	if (lg_buf_reserve(o, room + r->body_len + 256)) {
		lg_buf_free(&pb);
		return -1;
	}
	o->len = room; /* the gap before the body is filled by the head below */
	if (r->ep == LG_EP_EMBED && row->embed_body) {
		row->embed_body(r, cd, o);
	} else if (r->native || r->ep == LG_EP_EMBED) {
		lg_prov_openai_body(r, cd, o);
	} else {
		if (!lg_canon(r)) {
			lg_buf_free(&pb);
			return -2;
		}
		if ((k = (row->body ? row->body : lg_w_openai)(r, cd, o)) < 0) {
			lg_buf_free(&pb);
			return k;
		}
	}
	if (o->err) {
		lg_buf_free(&pb);
		return -1;
	}
	body_len = o->len - room;
	{ /* the head, in the gap before the body, without printf: this runs for every upstream request */
		struct lg_hw w;
		char num[24];
		w.p = o->p;
		w.at = 0;
		w.cap = room;
		lg_hw_z(&w, "POST ");
		lg_hw_z(&w, path);
		lg_hw_z(&w, " HTTP/1.1\r\nHost: ");
		lg_hw_z(&w, host);
		lg_hw_z(&w, "\r\nContent-Type: application/json\r\nAccept: ");
		lg_hw_z(&w, r->stream ? row->stream_accept : "application/json");
		lg_hw_z(&w, "\r\nUser-Agent: llmgw/" LLMGW_VERSION "\r\n");
		row->auth(&w, r, p, path, o->p + room, body_len);
		for (i = 0; i < p->nheaders; i++) lg_hw_line(&w, "", p->headers[i]);
		lg_hw_z(&w, "Content-Length: ");
		k = lg_utoa(num, body_len, 0);
		lg_hw_n(&w, num + k, (size_t)(24 - k));
		lg_hw_z(&w, "\r\n\r\n");
		lg_buf_free(&pb);
		if (w.at > w.cap) return -1; /* cannot happen: room counts every part */
		o->off = room - w.at;
		memmove(o->p + o->off, o->p, w.at);
	}
	return 0;
}

/* Server-sent events. */
static LG_INLINE long lg_frame_sse(struct lg_req *r, const char *p, size_t n, const char **err)
{
	struct lg_sse_ev ev;
	size_t k = lg_sse_next(p, n, &ev, NULL);
	if (k == (size_t)-1) { /* several data lines to join: only then room for it */
		if (lg_buf_reserve(&r->scratch, n)) return 0;
		k = lg_sse_next(p, n, &ev, r->scratch.p);
	}
	if (k == 0) {
		if (n > LLMGW_MAX_EVENT) *err = "a stream event larger than the limit";
		return n > LLMGW_MAX_EVENT ? -1 : 0;
	}
	if (ev.ndata) lg_ev_in(r, ev.event, ev.data);
	return (long)k;
}

/* --- 11e. provider openai: path, request body, native rewrite, parser ---- */

/* The client's body with the model rewritten and llmgw's own fields
 * (models, provider, usage) removed; streams always ask for usage. */
static void lg_prov_openai_body(struct lg_req *r, const struct lg_cand *cd, struct lg_buf *o)
{
	const struct lg_json *j = &r->j;
	const char *s = r->body;
	struct lg_jit it = lg_json_iter(j, 0);
	int first = 1, have_so = 0;
	lg_buf_addc(o, '{');
	while (lg_json_next(j, &it)) {
		int v = it.val;
		lg_str key = lg_json_raw(j, s, it.key);
		if (lg_str_eq(key, "models") || lg_str_eq(key, "provider") || lg_str_eq(key, "usage")) continue;
		if (r->ep == LG_EP_COMPACT && lg_str_eq(key, "stream")) continue; /* answered whole */
		if (!first) lg_buf_addc(o, ',');
		first = 0;
		lg_buf_adds(o, lg_json_span(j, s, it.key));
		lg_buf_addc(o, ':');
		if (lg_str_eq(key, "model")) {
			lg_json_wz(o, cd->upstream);
		} else if (lg_str_eq(key, "stream_options") && r->stream && lg_json_type(j, v) == LG_J_OBJ &&
		           r->d->wire == LG_WIRE_OPENAI) {
			/* keep the client's options, force include_usage */
			struct lg_jit so = lg_json_iter(j, v);
			have_so = 1;
			lg_buf_addc(o, '{');
			while (lg_json_next(j, &so))
				if (!lg_str_eq(lg_json_raw(j, s, so.key), "include_usage")) {
					lg_buf_adds(o, lg_json_span(j, s, so.key));
					lg_buf_addc(o, ':');
					lg_buf_adds(o, lg_json_span(j, s, so.val));
					lg_buf_addc(o, ',');
				}
			lg_buf_addz(o, "\"include_usage\":true}");
		} else {
			lg_buf_adds(o, lg_json_span(j, s, v));
		}
	}
	if (r->stream && !have_so && r->d->wire == LG_WIRE_OPENAI) /* chat only: Responses streams end with usage */
		lg_buf_addz(o, ",\"stream_options\":{\"include_usage\":true}");
	lg_buf_addc(o, '}');
}

/* Reads an OpenAI usage object into r->usage and prices it. */
static void lg_prov_openai_usage(struct lg_req *r, const struct lg_json *j, const char *s, int u)
{
	int d;
	struct lg_usage *us = &r->usage;
	us->prompt = lg_json_i64(j, s, lg_json_get(j, s, u, "prompt_tokens"));
	us->completion = lg_json_i64(j, s, lg_json_get(j, s, u, "completion_tokens"));
	us->cached = us->cache_write = us->reasoning = 0;
	if ((d = lg_json_get(j, s, u, "prompt_tokens_details")) >= 0) {
		us->cached = lg_json_i64(j, s, lg_json_get(j, s, d, "cached_tokens"));
		us->cache_write = lg_json_i64(j, s, lg_json_get(j, s, d, "cache_write_tokens"));
	}
	if ((d = lg_json_get(j, s, u, "completion_tokens_details")) >= 0)
		us->reasoning = lg_json_i64(j, s, lg_json_get(j, s, d, "reasoning_tokens"));
	lg_ev_acct(r, LG_EV_USAGE, 0, LG_NOSTR);
}

/* Rewrites one OpenAI JSON object (a completion or a stream chunk) for the
 * client: "provider" first, the public model name, usage with its cost.
 * In a stream the usage goes out only if the client asked for it; a chunk
 * that carried nothing else is dropped (returns 0). Returns 1 when o holds
 * the object, -1 when it is not an object we understand. */
static int lg_prov_openai_rewrite(struct lg_req *r, const char *s, size_t n, struct lg_buf *o,
                                  int chunk)
{
	struct lg_json j;
	struct lg_jit it;
	int u, ch, drop_usage = 0;
	memset(&j, 0, sizeof j);
	if (lg_req_json(r, &j, s, n) <= 0 || j.t[0].type != LG_J_OBJ) return -1;
	u = lg_json_get(&j, s, 0, "usage");
	if (lg_json_type(&j, u) == LG_J_OBJ) {
		lg_prov_openai_usage(r, &j, s, u);
		if (chunk && !r->want_usage) {
			ch = lg_json_get(&j, s, 0, "choices");
			if (lg_json_type(&j, ch) != LG_J_ARR || j.t[ch].size == 0) return 0;
			drop_usage = 1;
		}
	}
	if (chunk && (ch = lg_json_get(&j, s, 0, "choices")) >= 0) {
		uint32_t i;
		for (i = 0; i < j.t[ch].size; i++) {
			int fr = lg_json_get(&j, s, lg_json_at(&j, ch, i), "finish_reason");
			if (lg_json_type(&j, fr) == LG_J_STR) lg_ev_acct(r, LG_EV_FINISH, lg_fin_code(lg_jesc(&j, s, fr)), LG_NOSTR);
		}
	}
	if (chunk && lg_json_get(&j, s, 0, "error") >= 0) /* an error inside the stream ends it */
		lg_ev_acct(r, LG_EV_ERROR, 502, lg_strz("error event in the stream"));
	lg_buf_addz(o, "{\"provider\":");
	lg_json_wz(o, r->served->prov->name);
	it = lg_json_iter(&j, 0);
	while (lg_json_next(&j, &it)) {
		int v = it.val;
		lg_str key = lg_json_raw(&j, s, it.key);
		if (lg_str_eq(key, "provider") || (drop_usage && lg_str_eq(key, "usage"))) continue;
		lg_buf_addc(o, ',');
		lg_buf_adds(o, lg_json_span(&j, s, it.key));
		lg_buf_addc(o, ':');
		if (lg_str_eq(key, "model")) {
			lg_json_wz(o, r->served->model);
		} else if (v == u && lg_json_type(&j, u) == LG_J_OBJ) {
			struct lg_jit um = lg_json_iter(&j, u);
			int firstm = 1;
			lg_buf_addc(o, '{');
			while (lg_json_next(&j, &um))
				if (!lg_str_eq(lg_json_raw(&j, s, um.key), "cost")) {
					if (!firstm) lg_buf_addc(o, ',');
					firstm = 0;
					lg_buf_adds(o, lg_json_span(&j, s, um.key));
					lg_buf_addc(o, ':');
					lg_buf_adds(o, lg_json_span(&j, s, um.val));
				}
			lg_buf_addz(o, firstm ? "\"cost\":" : ",\"cost\":");
			lg_json_wnum(o, r->usage.cost);
			lg_buf_addc(o, '}');
		} else {
			lg_buf_adds(o, lg_json_span(&j, s, v));
		}
	}
	lg_buf_addc(o, '}');
	return o->err ? -1 : 1;
}

/* A finish_reason with a value ends the choice. */
static void lg_prov_openai_fin(struct lg_req *r, const char *fin, const char *e)
{
	const char *q;
	for (q = fin + 15; q < e && (*q == ' ' || *q == ':'); q++) {
	}
	if (q < e && *q == '"') lg_ev_acct(r, LG_EV_FINISH, LG_FIN_STOP, LG_NOSTR); /* the code: writers only */
}

/* The common chunk (text or tool deltas: no usage, error or provider in
 * it) rewritten without tokenizing: "provider" goes in front and the
 * top-level "model" value is replaced. Returns 0 to take the full path.
 * A key is structural when the quote before it follows '{' or ','; inside
 * a string every quote is escaped. */
static int lg_prov_openai_quick(struct lg_req *r, lg_str d)
{
	const char *p = d.p, *e = d.p + d.n, *m = NULL, *v, *ve, *q, *fin = NULL, *scan = p + 1;
	char jprov[136], jmodel[264];
	uint32_t w, k_usag, k_erro, k_prov, k_fini, k_mode;
	lg_str pt[5]; /* the head (one kept part, or four), then the rest */
	int cached, npt;
	if (d.n < 2 || p[0] != '{' || !r->cc) return 0;
	/* the chunks of a stream share their head ({"id":..,"model":"..") byte
	 * for byte: when this one starts with the last one's, the rewritten head
	 * is the same and only the rest is looked at */
	cached = r->q_ok && d.n > r->qin_n && memcmp(p, r->qin, r->qin_n) == 0;
	if (cached) scan = p + r->qin_n;
	memcpy(&k_usag, "usag", 4), memcpy(&k_erro, "erro", 4), memcpy(&k_prov, "prov", 4);
	memcpy(&k_fini, "fini", 4), memcpy(&k_mode, "mode", 4);
	/* one pass over the quotes, looking at the keys that matter: the four
	 * bytes after each quote against theirs (compares that are nearly
	 * always false predict well; a switch per quote did not) */
	for (q = lg_next_quote(scan, e); q < e; q = lg_next_quote(q + 1, e)) {
		size_t left = (size_t)(e - q);
		if (left < 8) break; /* no key of interest fits, nor its value */
		memcpy(&w, q + 1, 4);
		if (w != k_usag && w != k_erro && w != k_prov && w != k_fini && w != k_mode) continue;
		if (q[-1] == '\\') continue;
		if (memcmp(q, "\"usage\"", 7) == 0 || memcmp(q, "\"error\"", 7) == 0 ||
		    (left >= 11 && memcmp(q, "\"provider\"", 10) == 0))
			return 0;
		if (!fin && left >= 16 && memcmp(q, "\"finish_reason\"", 15) == 0) fin = q;
		if (!m && !cached && memcmp(q, "\"model\"", 7) == 0) {
			const char *b = q - 1;
			while (b > p && (*b == ' ' || *b == '\n' || *b == '\r' || *b == '\t')) b--;
			if (*b == '{' || *b == ',') m = q; /* a key, not text inside a string */
		}
	}
	if (cached) {
		ve = scan;
		if (memchr(ve, '\n', (size_t)(e - ve))) return 0;
		pt[0] = lg_str_of(r->qout, r->qout_n);
		npt = 1;
	} else {
		size_t np, nm, o = 0;
		int i;
		if (!m) return 0;
		for (v = m + 7; v < e && (*v == ' ' || *v == ':' || *v == '\t'); v++) {
		}
		if (v >= e || *v != '"') return 0;
		for (ve = v + 1; ve < e && *ve != '"'; ve++)
			if (*ve == '\\') ve++;
		if (ve >= e) return 0;
		ve++; /* past the closing quote */
		/* names to escape, or a data line break to keep: the general path */
		np = lg_json_plainz(jprov, sizeof jprov, r->served->prov->name);
		nm = lg_json_plainz(jmodel, sizeof jmodel, r->served->model);
		if (!np || !nm || memchr(p, '\n', d.n)) return 0;
		/* the head as it goes out: {"provider":"P", the chunk's own keys up
		 * to the model's value, "MODEL" (the chunk's '{' becomes the comma) */
		jprov[np] = ','; /* the chunk's '{' becomes the comma after provider */
		pt[0] = lg_str_of("{\"provider\":", 12);
		pt[1] = lg_str_of(jprov, np + 1);
		pt[2] = lg_str_of(p + 1, (size_t)(v - p - 1));
		pt[3] = lg_str_of(jmodel, nm);
		npt = 4;
		/* kept for the next chunks when it fits (and holds no finish_reason) */
		r->q_ok = 0;
		for (i = 0; i < 4; i++) o += pt[i].n;
		if (o <= sizeof r->qout && (size_t)(ve - p) <= sizeof r->qin && (!fin || fin >= ve)) {
			for (o = 0, i = 0; i < 4; i++) memcpy(r->qout + o, pt[i].p, pt[i].n), o += pt[i].n;
			r->qout_n = (uint16_t)o;
			memcpy(r->qin, p, (size_t)(ve - p));
			r->qin_n = (uint16_t)(ve - p);
			r->q_ok = 1;
		}
	}
	if (fin) lg_prov_openai_fin(r, fin, e);
	pt[npt++] = lg_str_of(ve, (size_t)(e - ve)); /* the rest, as it came */
	lg_resp_event_parts(r, pt, npt);
	return 1;
}

/* One event of an OpenAI stream: forwarded as it came, rewritten (the
 * OpenAI dialect row's native_event). */
static void lg_prov_openai_event(struct lg_req *r, lg_str ev, lg_str data)
{
	struct lg_buf o, clean;
	lg_str t;
	int k, scrubbed = 0;
	LG_UNUSED(ev); /* OpenAI streams have data lines only */
	if (lg_str_eq(data, "[DONE]")) {
		if (!r->stream_done) lg_resp_event(r, "[DONE]", 6);
		lg_ev_acct(r, LG_EV_END, 0, LG_NOSTR);
		return;
	}
	if (r->stream_done) return;
	lg_ev_acct(r, LG_EV_TEXT, 1, LG_NOSTR); /* OpenAI-style streams: a token per chunk, nearly always */
	if (lg_prov_openai_quick(r, data)) return;
	t = lg_str_trim(data);
	if (t.n > 9 && memcmp(t.p, "{\"error\"", 8) == 0 && lg_scrub(r->cfg, data.p, data.n, &clean)) {
		/* an error event ({"error": ...}) passed on natively: never with the credential it may quote */
		data = lg_str_of(clean.p, clean.len);
		scrubbed = 1;
	}
	lg_buf_init(&o, 0);
	k = lg_prov_openai_rewrite(r, data.p, data.n, &o, 1);
	if (k < 0) {
		/* not JSON we understand: pass it on untouched */
		lg_resp_event(r, data.p, data.n);
	} else if (k > 0) {
		lg_resp_event(r, o.p, o.len);
	}
	lg_buf_free(&o);
	if (scrubbed) lg_buf_free(&clean);
}

/* OpenAI Chat Completions from canonical (an Anthropic or Responses
 * client on an OpenAI-type provider). */
static int lg_w_openai(struct lg_req *r, const struct lg_cand *cd, struct lg_buf *o)
{
	const struct lg_creq *q = r->creq;
	int i, k, first = 1;
	char num[64];
	lg_buf_addz(o, "{\"model\":");
	lg_json_wz(o, cd->upstream);
	lg_buf_addz(o, ",\"messages\":[");
	lg_w_system(o, q, "", "{\"role\":\"system\",\"content\":", "", 0);
	first = !q->nsys;
	for (i = 0; i < q->nm; i++) {
		const struct lg_cmsg *m = &q->m[i];
		int ncontent = 0, ntc = 0;
		if (m->role == LG_R_SYSTEM) { /* a system message where it was */
			for (k = 0; k < m->np; k++) {
				if (m->p[k].type != LG_P_TEXT) continue;
				lg_buf_addz(o, first ? "{\"role\":\"system\",\"content\":" : ",{\"role\":\"system\",\"content\":");
				lg_w_str(o, m->p[k].text);
				lg_buf_addc(o, '}');
				first = 0;
			}
			continue;
		}
		for (k = 0; k < m->np; k++) { /* tool results become tool messages, first */
			if (m->p[k].type != LG_P_TOOL_RESULT) continue;
			lg_buf_addz(o, first ? "{\"role\":\"tool\",\"tool_call_id\":" : ",{\"role\":\"tool\",\"tool_call_id\":");
			lg_w_str(o, m->p[k].id);
			lg_buf_addz(o, ",\"content\":");
			lg_w_str(o, m->p[k].text);
			lg_buf_addc(o, '}');
			first = 0;
		}
		for (k = 0; k < m->np; k++) {
			ncontent += m->p[k].type == LG_P_TEXT || m->p[k].type == LG_P_IMAGE;
			ntc += m->p[k].type == LG_P_TOOL_CALL;
		}
		if (!ncontent && !ntc) continue;
		lg_buf_addz(o, first ? "{\"role\":" : ",{\"role\":");
		first = 0;
		lg_buf_addz(o, m->role == LG_R_USER ? "\"user\",\"content\":" : "\"assistant\",\"content\":");
		if (!ncontent) {
			lg_buf_addz(o, "null");
		} else if (m->role == LG_R_ASSISTANT) { /* assistant text joined */
			lg_buf_addc(o, '"');
			for (k = 0; k < m->np; k++)
				if (m->p[k].type == LG_P_TEXT) lg_buf_adds(o, m->p[k].text);
			lg_buf_addc(o, '"');
		} else {
			int c = 0;
			lg_buf_addc(o, '[');
			for (k = 0; k < m->np; k++) {
				const struct lg_cpart *p = &m->p[k];
				if (p->type == LG_P_TEXT) {
					lg_buf_addz(o, c++ ? ",{\"type\":\"text\",\"text\":" : "{\"type\":\"text\",\"text\":");
					lg_w_str(o, p->text);
					lg_buf_addc(o, '}');
				} else if (p->type == LG_P_IMAGE) {
					lg_buf_addz(o, c++ ? ",{\"type\":\"image_url\",\"image_url\":{\"url\":\"" : "{\"type\":\"image_url\",\"image_url\":{\"url\":\"");
					if (p->data.n) {
						lg_buf_addz(o, "data:");
						lg_buf_adds(o, p->media);
						lg_buf_addz(o, ";base64,");
						lg_buf_adds(o, p->data);
					} else {
						lg_buf_adds(o, p->url);
					}
					lg_buf_addz(o, "\"}}");
				}
			}
			lg_buf_addc(o, ']');
		}
		if (ntc) {
			int c = 0;
			lg_buf_addz(o, ",\"tool_calls\":[");
			for (k = 0; k < m->np; k++) {
				const struct lg_cpart *p = &m->p[k];
				if (p->type != LG_P_TOOL_CALL) continue;
				lg_buf_addz(o, c++ ? ",{\"id\":" : "{\"id\":");
				lg_w_str(o, p->id);
				lg_buf_addz(o, ",\"type\":\"function\",\"function\":{\"name\":");
				lg_w_str(o, p->name);
				lg_buf_addz(o, ",\"arguments\":");
				lg_json_wstr(o, p->args.p, p->args.n);
				lg_buf_addz(o, "}}");
			}
			lg_buf_addc(o, ']');
		}
		lg_buf_addc(o, '}');
	}
	lg_buf_addc(o, ']');
	if (q->ntools) {
		static const struct lg_w_spell sp = {"{\"type\":\"function\",\"function\":{\"name\":", ",\"description\":",
		                                     ",\"parameters\":", "}}", 0, 0, 0};
		lg_buf_addz(o, ",\"tools\":[");
		lg_w_tools(r, o, &sp);
		lg_buf_addc(o, ']');
		if (q->tool_choice == LG_TC_FUNC) {
			lg_buf_addz(o, ",\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":");
			lg_w_str(o, q->tool_name);
			lg_buf_addz(o, "}}");
		} else if (q->tool_choice) {
			lg_buf_printf(o, ",\"tool_choice\":\"%s\"", q->tool_choice == LG_TC_NONE ? "none"
			                                            : q->tool_choice == LG_TC_REQUIRED ? "required" : "auto");
		}
		if (q->parallel == 0) lg_buf_addz(o, ",\"parallel_tool_calls\":false");
	}
	if (q->max_tokens) /* reasoning models (an effort is asked for) take only max_completion_tokens */
		lg_buf_printf(o, q->effort.n ? ",\"max_completion_tokens\":%lld" : ",\"max_tokens\":%lld",
		              (long long)q->max_tokens);
	if (lg_w_num_or(q->temperature, num, sizeof num, 0)) lg_buf_printf(o, ",\"temperature\":%s", num);
	if (lg_w_num_or(q->top_p, num, sizeof num, 0)) lg_buf_printf(o, ",\"top_p\":%s", num);
	lg_w_stops(o, q, ",\"stop\":[", q->nstop, 0);
	if (q->user.n) {
		lg_buf_addz(o, ",\"user\":");
		lg_w_str(o, q->user);
	}
	if (q->rf == 1) lg_buf_addz(o, ",\"response_format\":{\"type\":\"json_object\"}");
	if (q->rf == 2) { /* OpenAI requires the schema's name */
		lg_buf_addz(o, ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":");
		lg_w_str(o, q->rf_name.n ? q->rf_name : lg_strz("response"));
		lg_buf_addz(o, ",\"schema\":");
		lg_buf_adds(o, q->rf_schema.n ? q->rf_schema : lg_strz("{\"type\":\"object\"}"));
		lg_buf_addz(o, q->rf_strict ? ",\"strict\":true}}" : "}}");
	}
	if (q->effort.n) {
		lg_buf_addz(o, ",\"reasoning_effort\":");
		lg_w_str(o, q->effort);
	}
	if (r->stream) lg_buf_addz(o, ",\"stream\":true,\"stream_options\":{\"include_usage\":true}");
	lg_buf_addc(o, '}');
	return 0;
}

static void lg_p_openai_usage(struct lg_req *r, const struct lg_json *j, const char *s, int u)
{
	if (lg_json_type(j, u) == LG_J_OBJ) lg_prov_openai_usage(r, j, s, u);
}

/* One completion (message) or one chunk (delta). */
static void lg_p_openai_obj(struct lg_req *r, const struct lg_json *j, const char *s, int chunk)
{
	int ch = lg_json_get(j, s, 0, "choices"), c0 = lg_json_at(j, ch, 0), e = lg_json_get(j, s, 0, "error");
	int m = lg_json_get(j, s, c0, chunk ? "delta" : "message"), t, fr;
	uint32_t i;
	if (e >= 0) {
		int msg = lg_json_get(j, s, e, "message");
		lg_ev(r, LG_EV_ERROR, 502, lg_jesc(j, s, msg >= 0 ? msg : e), LG_NOSTR, 0);
		return;
	}
	if (m >= 0) {
		if ((t = lg_json_get(j, s, m, "reasoning_content")) < 0) t = lg_json_get(j, s, m, "reasoning");
		if (lg_json_type(j, t) == LG_J_STR && j->t[t].end > j->t[t].start)
			lg_ev(r, LG_EV_REASONING, 0, lg_json_raw(j, s, t), LG_NOSTR, 0);
		t = lg_json_get(j, s, m, "content");
		if (lg_json_type(j, t) == LG_J_STR && j->t[t].end > j->t[t].start)
			lg_ev(r, LG_EV_TEXT, 0, lg_json_raw(j, s, t), LG_NOSTR, 0);
		t = lg_json_get(j, s, m, "tool_calls");
		for (i = 0; lg_json_type(j, t) == LG_J_ARR && i < j->t[t].size; i++) {
			int tc = lg_json_at(j, t, i), fn = lg_json_get(j, s, tc, "function");
			int idx = chunk ? (int)lg_json_i64(j, s, lg_json_get(j, s, tc, "index")) : (int)i;
			int id = lg_json_get(j, s, tc, "id");
			if (lg_json_type(j, id) == LG_J_STR || lg_json_get(j, s, fn, "name") >= 0)
				lg_ev(r, LG_EV_TOOL, idx, lg_jesc(j, s, id), lg_jesc(j, s, lg_json_get(j, s, fn, "name")), 0);
			lg_ev(r, LG_EV_ARGS, idx, lg_jesc(j, s, lg_json_get(j, s, fn, "arguments")), LG_NOSTR, 0);
		}
	}
	fr = lg_json_get(j, s, c0, "finish_reason");
	if (lg_json_type(j, fr) == LG_J_STR) lg_ev(r, LG_EV_FINISH, lg_fin_code(lg_json_raw(j, s, fr)), LG_NOSTR, LG_NOSTR, 0);
	lg_p_openai_usage(r, j, s, lg_json_get(j, s, 0, "usage"));
}

static void lg_p_openai_event(struct lg_req *r, lg_str ev, lg_str data)
{
	struct lg_json j;
	LG_UNUSED(ev);
	if (lg_str_eq(data, "[DONE]")) {
		lg_ev(r, LG_EV_END, 0, LG_NOSTR, LG_NOSTR, 0);
		return;
	}
	if (lg_p_event_json(r, &j, data)) lg_p_openai_obj(r, &j, data.p, 1);
}

static int lg_p_openai_full(struct lg_req *r, const char *s, size_t n)
{
	struct lg_json j;
	memset(&j, 0, sizeof j);
	if (lg_req_json(r, &j, s, n) <= 0 || j.t[0].type != LG_J_OBJ) return -1;
	lg_p_openai_obj(r, &j, s, 0);
	lg_ev(r, LG_EV_END, 0, LG_NOSTR, LG_NOSTR, 0);
	return 0;
}

/* The endpoint of an OpenAI-wire request: /embeddings, /responses (the
 * Responses API forwarded natively), or /chat/completions. */
static const char *lg_prov_openai_tail(const struct lg_req *r)
{
	if (r->ep == LG_EP_EMBED) return "/embeddings";
	if (r->native && r->d->wire == LG_WIRE_RESPONSES) return r->ep == LG_EP_COMPACT ? "/responses/compact" : "/responses";
	return "/chat/completions";
}

/* OpenAI (and the default): base path + the endpoint, in fast when it
 * fits (the common case, no buffer). */
static const char *lg_prov_openai_path(const struct lg_req *r, const struct lg_cand *cd, char *fast, size_t cap,
                                       struct lg_buf *pb)
{
	const char *tail = lg_prov_openai_tail(r);
	const char *bp = cd->prov->base_path;
	if (strlen(bp) + 28 < cap) {
		size_t at = lg_cpy(fast, cap, bp);
		lg_cpy(fast + at, cap - at, tail);
		return fast;
	}
	lg_buf_addz(pb, bp);
	lg_buf_addz(pb, tail);
	return lg_prov_path_of(pb);
}

/* --- 11f. provider azure: the openai wire with its own paths and key header --- */

/* Azure: the v1 API (base_url ends in /openai/v1) or a deployment's path
 * with api-version; the Responses API has no deployment path (the
 * deployment is the body's model). */
static const char *lg_prov_azure_path(const struct lg_req *r, const struct lg_cand *cd, char *fast, size_t cap,
                                      struct lg_buf *pb)
{
	const struct lg_provider *p = cd->prov;
	const char *tail = lg_prov_openai_tail(r);
	LG_UNUSED(fast), LG_UNUSED(cap);
	lg_buf_addz(pb, p->base_path);
	if (strstr(p->base_path, "/openai/v1"))
		lg_buf_addz(pb, tail);
	else if (!strncmp(tail, "/responses", 10))
		lg_buf_printf(pb, "/openai%s?api-version=%s", tail, p->api_version ? p->api_version : "2025-04-01-preview");
	else {
		lg_buf_addz(pb, "/openai/deployments/");
		lg_uri_enc(pb, cd->upstream, strlen(cd->upstream));
		lg_buf_printf(pb, "/%s?api-version=%s", r->ep == LG_EP_EMBED ? "embeddings" : "chat/completions",
		              p->api_version ? p->api_version : "2024-10-21");
	}
	return lg_prov_path_of(pb);
}

static void lg_prov_azure_auth(struct lg_hw *w, const struct lg_req *r, const struct lg_provider *p,
                               const char *path, const char *body, size_t n)
{
	LG_UNUSED(r), LG_UNUSED(path), LG_UNUSED(body), LG_UNUSED(n);
	lg_hw_line(w, "api-key: ", p->api_key);
}

/* --- 11g. provider anthropic: path, auth, request body, parser ----------- */

/* Anthropic Messages from canonical. */
static int lg_w_anthropic(struct lg_req *r, const struct lg_cand *cd, struct lg_buf *o)
{
	const struct lg_creq *q = r->creq;
	int i, k, end, first = 1, pass;
	int64_t mt = lg_w_max_tokens(cd, q);
	char num[64];
	if (q->thinking && mt <= q->thinking) mt = q->thinking + 4096;
	lg_buf_addz(o, "{\"model\":");
	lg_json_wz(o, cd->upstream);
	lg_buf_printf(o, ",\"max_tokens\":%lld", (long long)mt);
	lg_w_system(o, q, ",\"system\":[", "{\"type\":\"text\",\"text\":", "]", 1);
	lg_buf_addz(o, ",\"messages\":[");
	for (i = 0; i < q->nm; i = end) {
		int role = q->m[i].role, c = 0;
		end = lg_w_turn(q, i); /* consecutive turns merge */
		for (k = i; k < end; k++) c += q->m[k].role == LG_R_SYSTEM ? 0 : q->m[k].np;
		if (role == LG_R_SYSTEM || !c) continue;
		lg_buf_addz(o, first ? "{\"role\":" : ",{\"role\":");
		first = 0;
		lg_buf_addz(o, role == LG_R_USER ? "\"user\",\"content\":[" : "\"assistant\",\"content\":[");
		c = 0;
		for (pass = 0; pass < 2; pass++) { /* tool results before anything else */
			struct lg_w_pit it = {0, 0};
			const struct lg_cpart *p;
			while ((p = lg_w_part(q, i, end, &it))) {
				if ((p->type == LG_P_TOOL_RESULT) != (pass == 0)) continue;
					if (p->type == LG_P_THINKING && !p->sig.n) continue; /* unsigned thinking cannot go back */
					if (c++) lg_buf_addc(o, ',');
					switch (p->type) {
					case LG_P_TEXT:
						lg_buf_addz(o, "{\"type\":\"text\",\"text\":");
						lg_w_str(o, p->text);
						lg_buf_addc(o, '}');
						break;
					case LG_P_IMAGE:
						if (p->data.n) {
							lg_buf_addz(o, "{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":");
							lg_w_str(o, p->media);
							lg_buf_addz(o, ",\"data\":");
							lg_w_str(o, p->data);
						} else {
							lg_buf_addz(o, "{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":");
							lg_w_str(o, p->url);
						}
						lg_buf_addz(o, "}}");
						break;
					case LG_P_TOOL_CALL:
						lg_buf_addz(o, "{\"type\":\"tool_use\",\"id\":");
						lg_w_str(o, p->id);
						lg_buf_addz(o, ",\"name\":");
						lg_w_str(o, p->name);
						lg_buf_addz(o, ",\"input\":");
						lg_buf_adds(o, p->args);
						lg_buf_addc(o, '}');
						break;
					case LG_P_TOOL_RESULT:
						lg_buf_addz(o, "{\"type\":\"tool_result\",\"tool_use_id\":");
						lg_w_str(o, p->id);
						lg_buf_addz(o, ",\"content\":");
						lg_w_str(o, p->text);
						if (p->is_error) lg_buf_addz(o, ",\"is_error\":true");
						lg_buf_addc(o, '}');
						break;
					default:
						lg_buf_addz(o, "{\"type\":\"thinking\",\"thinking\":");
						lg_w_str(o, p->text);
						lg_buf_addz(o, ",\"signature\":");
						lg_w_str(o, p->sig);
						lg_buf_addc(o, '}');
					}
			}
		}
		lg_buf_addz(o, "]}");
	}
	lg_buf_addc(o, ']');
	r->rf_tool = 0;
	if (q->ntools || (q->rf && !q->ntools) || lg_w_has_calls(q)) {
		static const struct lg_w_spell sp = {"{\"name\":", ",\"description\":", ",\"input_schema\":", "}", 1, 1, 0};
		lg_buf_addz(o, ",\"tools\":[");
		lg_w_tools(r, o, &sp); /* history with tool calls needs the tools declared */
		lg_buf_addc(o, ']');
		if (r->rf_tool) {
			lg_buf_addz(o, ",\"tool_choice\":{\"type\":\"tool\",\"name\":\"" LG_RF_TOOL "\"}");
		} else if (q->tool_choice || q->parallel == 0) {
			lg_buf_printf(o, ",\"tool_choice\":{\"type\":\"%s\"",
			              q->tool_choice == LG_TC_NONE ? "none" : q->tool_choice == LG_TC_REQUIRED ? "any"
			              : q->tool_choice == LG_TC_FUNC ? "tool" : "auto");
			if (q->tool_choice == LG_TC_FUNC) {
				lg_buf_addz(o, ",\"name\":");
				lg_w_str(o, q->tool_name);
			}
			if (q->parallel == 0 && q->tool_choice != LG_TC_NONE) lg_buf_addz(o, ",\"disable_parallel_tool_use\":true");
			lg_buf_addc(o, '}');
		}
	}
	if (q->thinking)
		lg_buf_printf(o, ",\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":%lld}",
		              (long long)LG_MAX(q->thinking, (int64_t)1024));
	else if (lg_w_num_or(q->temperature, num, sizeof num, 1))
		lg_buf_printf(o, ",\"temperature\":%s", num);
	if (lg_w_num_or(q->top_p, num, sizeof num, 0) && !q->thinking) lg_buf_printf(o, ",\"top_p\":%s", num);
	if (lg_w_num_or(q->top_k, num, sizeof num, 0)) lg_buf_printf(o, ",\"top_k\":%s", num);
	lg_w_stops(o, q, ",\"stop_sequences\":[", q->nstop, 1);
	if (q->user.n) {
		lg_buf_addz(o, ",\"metadata\":{\"user_id\":");
		lg_w_str(o, q->user);
		lg_buf_addc(o, '}');
	}
	if (r->stream) lg_buf_addz(o, ",\"stream\":true");
	lg_buf_addc(o, '}');
	return 0;
}

static void lg_p_anth_usage(struct lg_req *r, const struct lg_json *j, const char *s, int u, int delta)
{
	int t;
	if (lg_json_type(j, u) != LG_J_OBJ) return;
	/* message_delta usage is cumulative and may repeat the input fields */
	if ((t = lg_json_get(j, s, u, "input_tokens")) >= 0 || !delta) {
		int64_t in = lg_json_i64(j, s, t), cr = lg_json_i64(j, s, lg_json_get(j, s, u, "cache_read_input_tokens")),
		        cw = lg_json_i64(j, s, lg_json_get(j, s, u, "cache_creation_input_tokens"));
		r->usage.prompt = in + cr + cw;
		r->usage.cached = cr;
		r->usage.cache_write = cw;
	}
	if ((t = lg_json_get(j, s, u, "output_tokens")) >= 0) r->usage.completion = lg_json_i64(j, s, t);
	lg_ev_acct(r, LG_EV_USAGE, 0, LG_NOSTR);
}

static void lg_p_anth_block(struct lg_req *r, const struct lg_json *j, const char *s, int b, int idx)
{
	lg_str ty = lg_jesc(j, s, lg_json_get(j, s, b, "type"));
	int t;
	if (lg_str_eq(ty, "text")) { /* strings only: anything else is not text (nor JSON to pass on) */
		if (lg_json_type(j, t = lg_json_get(j, s, b, "text")) == LG_J_STR && j->t[t].end > j->t[t].start)
			lg_ev(r, LG_EV_TEXT, 0, lg_json_raw(j, s, t), LG_NOSTR, 0);
	} else if (lg_str_eq(ty, "thinking")) {
		if (lg_json_type(j, t = lg_json_get(j, s, b, "thinking")) == LG_J_STR && j->t[t].end > j->t[t].start)
			lg_ev(r, LG_EV_REASONING, 0, lg_json_raw(j, s, t), LG_NOSTR, 0);
		if ((t = lg_json_get(j, s, b, "signature")) >= 0) lg_ev(r, LG_EV_SIG, 0, lg_jesc(j, s, t), LG_NOSTR, 0);
	} else if (lg_str_eq(ty, "tool_use")) {
		lg_str name = lg_jesc(j, s, lg_json_get(j, s, b, "name"));
		int in = lg_json_get(j, s, b, "input");
		if (r->rf_tool && lg_str_eq(name, LG_RF_TOOL)) { /* response_format: the input is the answer */
			if (lg_json_type(j, in) == LG_J_OBJ && j->t[in].size) { /* a stream's start block has input {} */
				lg_str raw = lg_json_span(j, s, in);
				lg_ev(r, LG_EV_TEXT, 0, lg_canon_esc(r, raw), LG_NOSTR, 0);
			}
			r->w->pblk[idx % LG_MAX_TOOLS] = 3;
			return;
		}
		lg_ev(r, LG_EV_TOOL, idx, lg_jesc(j, s, lg_json_get(j, s, b, "id")), name, 0);
		if (lg_json_type(j, in) == LG_J_OBJ && j->t[in].size) {
			lg_ev(r, LG_EV_ARGS, idx, lg_json_span(j, s, in), LG_NOSTR, 1);
			r->w->pargs[idx % LG_MAX_TOOLS] = 1;
		}
	}
}

static void lg_p_anth_event(struct lg_req *r, lg_str evname, lg_str data)
{
	struct lg_json j;
	const char *s = data.p;
	lg_str ty;
	int idx;
	struct lg_wst *w = r->w;
	if (!lg_p_event_json(r, &j, data)) return;
	ty = lg_jesc(&j, s, lg_json_get(&j, s, 0, "type"));
	if (!ty.n) ty = evname;
	idx = (int)lg_json_i64(&j, s, lg_json_get(&j, s, 0, "index"));
	if (lg_str_eq(ty, "message_start")) {
		lg_p_anth_usage(r, &j, s, lg_json_get(&j, s, lg_json_get(&j, s, 0, "message"), "usage"), 0);
	} else if (lg_str_eq(ty, "content_block_start")) {
		int b = lg_json_get(&j, s, 0, "content_block");
		lg_str bt = lg_jesc(&j, s, lg_json_get(&j, s, b, "type"));
		w->pblk[idx % LG_MAX_TOOLS] = lg_str_eq(bt, "tool_use") ? 1 : 0;
		w->pargs[idx % LG_MAX_TOOLS] = 0;
		if (lg_str_eq(bt, "tool_use")) lg_p_anth_block(r, &j, s, b, idx);
	} else if (lg_str_eq(ty, "content_block_delta")) {
		int d = lg_json_get(&j, s, 0, "delta");
		lg_str dt = lg_jesc(&j, s, lg_json_get(&j, s, d, "type"));
		if (lg_str_eq(dt, "text_delta")) {
			lg_ev(r, LG_EV_TEXT, 0, lg_jesc(&j, s, lg_json_get(&j, s, d, "text")), LG_NOSTR, 0);
		} else if (lg_str_eq(dt, "thinking_delta")) {
			lg_ev(r, LG_EV_REASONING, 0, lg_jesc(&j, s, lg_json_get(&j, s, d, "thinking")), LG_NOSTR, 0);
		} else if (lg_str_eq(dt, "signature_delta")) {
			lg_ev(r, LG_EV_SIG, 0, lg_jesc(&j, s, lg_json_get(&j, s, d, "signature")), LG_NOSTR, 0);
		} else if (lg_str_eq(dt, "input_json_delta")) {
			lg_str pj = lg_jesc(&j, s, lg_json_get(&j, s, d, "partial_json"));
			if (w->pblk[idx % LG_MAX_TOOLS] == 3) { /* the forced response_format tool: text */
				lg_ev(r, LG_EV_TEXT, 0, pj, LG_NOSTR, 0);
			} else if (pj.n) {
				lg_ev(r, LG_EV_ARGS, idx, pj, LG_NOSTR, 0);
				w->pargs[idx % LG_MAX_TOOLS] = 1;
			}
		}
	} else if (lg_str_eq(ty, "content_block_stop")) {
		if (w->pblk[idx % LG_MAX_TOOLS] == 1 && !w->pargs[idx % LG_MAX_TOOLS]) /* a tool block that got no JSON */
			lg_ev(r, LG_EV_ARGS, idx, lg_str_of("{}", 2), LG_NOSTR, 1);
	} else if (lg_str_eq(ty, "message_delta")) {
		lg_str sr = lg_jesc(&j, s, lg_json_get(&j, s, lg_json_get(&j, s, 0, "delta"), "stop_reason"));
		lg_p_anth_usage(r, &j, s, lg_json_get(&j, s, 0, "usage"), 1);
		if (sr.n) lg_ev(r, LG_EV_FINISH, r->rf_tool && lg_str_eq(sr, "tool_use") ? LG_FIN_STOP : lg_fin_code(sr),
		                LG_NOSTR, LG_NOSTR, 0);
	} else if (lg_str_eq(ty, "message_stop")) {
		lg_ev(r, LG_EV_END, 0, LG_NOSTR, LG_NOSTR, 0);
	} else if (lg_str_eq(ty, "error")) {
		int e = lg_json_get(&j, s, 0, "error");
		lg_str et = lg_jesc(&j, s, lg_json_get(&j, s, e, "type"));
		lg_ev(r, LG_EV_ERROR, lg_str_eq(et, "overloaded_error") ? 529 : lg_str_eq(et, "rate_limit_error") ? 429 : 502,
		      lg_jesc(&j, s, lg_json_get(&j, s, e, "message")), LG_NOSTR, 0);
	}
}

static int lg_p_anth_full(struct lg_req *r, const char *s, size_t n)
{
	struct lg_json j;
	int c, sr;
	uint32_t i;
	memset(&j, 0, sizeof j);
	if (lg_req_json(r, &j, s, n) <= 0 || j.t[0].type != LG_J_OBJ) return -1;
	c = lg_json_get(&j, s, 0, "content");
	for (i = 0; lg_json_type(&j, c) == LG_J_ARR && i < j.t[c].size; i++)
		lg_p_anth_block(r, &j, s, lg_json_at(&j, c, i), (int)i);
	lg_p_anth_usage(r, &j, s, lg_json_get(&j, s, 0, "usage"), 0);
	sr = lg_json_get(&j, s, 0, "stop_reason");
	if (lg_json_type(&j, sr) == LG_J_STR) {
		lg_str v = lg_json_raw(&j, s, sr);
		lg_ev(r, LG_EV_FINISH, r->rf_tool && lg_str_eq(v, "tool_use") ? LG_FIN_STOP : lg_fin_code(v), LG_NOSTR,
		      LG_NOSTR, 0);
	}
	lg_ev(r, LG_EV_END, 0, LG_NOSTR, LG_NOSTR, 0);
	return 0;
}

static const char *lg_prov_anth_path(const struct lg_req *r, const struct lg_cand *cd, char *fast, size_t cap,
                                     struct lg_buf *pb)
{
	const char *bp = cd->prov->base_path;
	size_t n = strlen(bp);
	LG_UNUSED(fast), LG_UNUSED(cap);
	lg_buf_addz(pb, bp);
	lg_buf_addz(pb, n >= 3 && strcmp(bp + n - 3, "/v1") == 0 ? "/messages" : "/v1/messages");
	if (r->ep == LG_EP_COUNT) lg_buf_addz(pb, "/count_tokens");
	if (r->native && r->query && r->query[0] == '?') lg_buf_addz(pb, r->query); /* ?beta=true, as it came */
	return lg_prov_path_of(pb);
}

static void lg_prov_anth_auth(struct lg_hw *w, const struct lg_req *r, const struct lg_provider *p,
                              const char *path, const char *body, size_t n)
{
	LG_UNUSED(path), LG_UNUSED(body), LG_UNUSED(n);
	lg_hw_line(w, "x-api-key: ", p->api_key);
	lg_hw_z(w, "anthropic-version: 2023-06-01\r\n");
	lg_hw_line(w, "anthropic-beta: ", r->anth_beta);
}

/* --- 11h. provider gemini: path, auth, request body, parser, embeddings, retry hint --- */

/* A JSON Schema as Gemini takes it: without additionalProperties, $schema,
 * $ref, $defs (an OpenAPI subset). */
static void lg_w_schema_at(struct lg_buf *o, const struct lg_json *j, const char *s, int t)
{
	struct lg_jit it = lg_json_iter(j, t);
	int c = 0;
	if (j->t[t].type == LG_J_OBJ) {
		lg_buf_addc(o, '{');
		while (lg_json_next(j, &it)) {
			lg_str key = lg_json_raw(j, s, it.key);
			if (lg_str_eq(key, "additionalProperties") || lg_str_eq(key, "$schema") || lg_str_eq(key, "$ref") ||
			    lg_str_eq(key, "$defs") || lg_str_eq(key, "definitions") || lg_str_eq(key, "strict"))
				continue;
			if (c++) lg_buf_addc(o, ',');
			lg_buf_adds(o, lg_json_span(j, s, it.key));
			lg_buf_addc(o, ':');
			lg_w_schema_at(o, j, s, it.val);
		}
		lg_buf_addc(o, '}');
	} else if (j->t[t].type == LG_J_ARR) {
		uint32_t i, k;
		lg_buf_addc(o, '[');
		for (i = 0, k = (uint32_t)t + 1; i < j->t[t].size; i++, k = j->t[k].next) {
			if (i) lg_buf_addc(o, ',');
			lg_w_schema_at(o, j, s, (int)k);
		}
		lg_buf_addc(o, ']');
	} else {
		lg_buf_adds(o, lg_json_span(j, s, t));
	}
}

static void lg_w_schema(struct lg_req *r, struct lg_buf *o, lg_str raw)
{
	struct lg_json j;
	memset(&j, 0, sizeof j);
	if (lg_req_json(r, &j, raw.p, raw.n) > 0)
		lg_w_schema_at(o, &j, raw.p, 0);
	else
		lg_buf_addz(o, "{\"type\":\"object\"}");
}

/* Gemini makes no tool-call ids; ours carry the thought signature (base64
 * as base64url) so it survives the round trip: call_<8 hex>[_<sig>]. */
static void lg_w_gemini_sig(struct lg_buf *o, lg_str id)
{
	size_t i;
	if (id.n < 15 || memcmp(id.p, "call_", 5) != 0 || id.p[13] != '_') return;
	lg_buf_addz(o, ",\"thoughtSignature\":\"");
	for (i = 14; i < id.n; i++) lg_buf_addc(o, id.p[i] == '-' ? '+' : id.p[i] == '_' ? '/' : id.p[i]);
	for (i = (id.n - 14) % 4; i && i < 4; i++) lg_buf_addc(o, '=');
	lg_buf_addc(o, '"');
}

/* Gemini generateContent from canonical. */
static int lg_w_gemini(struct lg_req *r, const struct lg_cand *cd, struct lg_buf *o)
{
	const struct lg_creq *q = r->creq;
	int i, end, first = 1;
	char num[64];
	LG_UNUSED(cd);
	lg_buf_addc(o, '{');
	lg_w_system(o, q, "\"systemInstruction\":{\"parts\":[", "{\"text\":", "]},", 1);
	lg_buf_addz(o, "\"contents\":[");
	for (i = 0; i < q->nm; i = end) {
		int role = q->m[i].role, c = 0, texts = 0, imgs = 0;
		struct lg_w_pit it = {0, 0};
		const struct lg_cpart *p;
		end = lg_w_turn(q, i); /* roles must alternate */
		if (role == LG_R_SYSTEM) continue; /* folded into systemInstruction */
		lg_buf_addz(o, first ? "{\"role\":" : ",{\"role\":");
		first = 0;
		lg_buf_addz(o, role == LG_R_USER ? "\"user\",\"parts\":[" : "\"model\",\"parts\":[");
		while ((p = lg_w_part(q, i, end, &it))) {
			if (p->type == LG_P_THINKING) continue;
			if (c++) lg_buf_addc(o, ',');
			switch (p->type) {
			case LG_P_TEXT:
				texts++;
				lg_buf_addz(o, "{\"text\":");
				lg_w_str(o, p->text);
				lg_buf_addc(o, '}');
				break;
			case LG_P_IMAGE:
				imgs++;
				if (p->data.n) {
					lg_buf_addz(o, "{\"inlineData\":{\"mimeType\":");
					lg_w_str(o, p->media);
					lg_buf_addz(o, ",\"data\":");
					lg_w_str(o, p->data);
				} else {
					lg_buf_printf(o, "{\"fileData\":{\"mimeType\":\"%s\",\"fileUri\":", lg_w_mime_of(p->url));
					lg_w_str(o, p->url);
				}
				lg_buf_addz(o, "}}");
				break;
			case LG_P_TOOL_CALL:
				lg_buf_addz(o, "{\"functionCall\":{\"name\":");
				lg_w_str(o, p->name);
				lg_buf_addz(o, ",\"args\":");
				lg_buf_adds(o, p->args);
				lg_buf_addc(o, '}');
				lg_w_gemini_sig(o, p->id);
				lg_buf_addc(o, '}');
				break;
			default: /* a tool result: the function's name from the call */
				texts++;
				lg_buf_addz(o, "{\"functionResponse\":{\"name\":");
				lg_w_str(o, lg_w_call_name(q, p->id));
				lg_buf_addz(o, ",\"response\":{\"content\":");
				lg_w_str(o, p->text);
				lg_buf_addz(o, "}}}");
			}
		}
		if (role == LG_R_USER && imgs && !texts) lg_buf_addz(o, c++ ? ",{\"text\":\" \"}" : "{\"text\":\" \"}");
		if (!c) lg_buf_addz(o, "{\"text\":\" \"}");
		lg_buf_addz(o, "]}");
	}
	lg_buf_addc(o, ']');
	if (q->ntools && q->tool_choice != LG_TC_NONE) { /* response_format goes as responseSchema */
		static const struct lg_w_spell sp = {"{\"name\":", ",\"description\":", ",\"parameters\":", "}", 0, 0, 1};
		lg_buf_addz(o, ",\"tools\":[{\"functionDeclarations\":[");
		lg_w_tools(r, o, &sp);
		lg_buf_addz(o, "]}]");
		if (q->tool_choice) {
			lg_buf_printf(o, ",\"toolConfig\":{\"functionCallingConfig\":{\"mode\":\"%s\"",
			              q->tool_choice == LG_TC_AUTO ? "AUTO" : "ANY");
			if (q->tool_choice == LG_TC_FUNC) {
				lg_buf_addz(o, ",\"allowedFunctionNames\":[");
				lg_w_str(o, q->tool_name);
				lg_buf_addc(o, ']');
			}
			lg_buf_addz(o, "}}");
		}
	}
	lg_buf_addz(o, ",\"generationConfig\":{");
	{ /* the thinking budget counts against maxOutputTokens: room for the answer beyond it */
		int64_t mt = lg_w_max_tokens(cd, q);
		if (q->thinking && mt <= q->thinking) mt = q->thinking + 4096;
		lg_buf_printf(o, "\"maxOutputTokens\":%lld", (long long)mt);
	}
	if (lg_w_num_or(q->temperature, num, sizeof num, 0)) lg_buf_printf(o, ",\"temperature\":%s", num);
	if (lg_w_num_or(q->top_p, num, sizeof num, 0)) lg_buf_printf(o, ",\"topP\":%s", num);
	if (lg_w_num_or(q->top_k, num, sizeof num, 0)) lg_buf_printf(o, ",\"topK\":%s", num);
	if (lg_w_num_or(q->seed, num, sizeof num, 0)) lg_buf_printf(o, ",\"seed\":%s", num);
	lg_w_stops(o, q, ",\"stopSequences\":[", 5, 0);
	if (q->rf) {
		lg_buf_addz(o, ",\"responseMimeType\":\"application/json\"");
		if (q->rf_schema.n) {
			lg_buf_addz(o, ",\"responseSchema\":");
			lg_w_schema(r, o, q->rf_schema);
		}
	}
	if (q->thinking)
		lg_buf_printf(o, ",\"thinkingConfig\":{\"thinkingBudget\":%lld,\"includeThoughts\":true}",
		              (long long)q->thinking);
	lg_buf_addz(o, "}}");
	return 0;
}

static void lg_p_gemini_obj(struct lg_req *r, const struct lg_json *j, const char *s)
{
	int cand = lg_json_at(j, lg_json_get(j, s, 0, "candidates"), 0), e = lg_json_get(j, s, 0, "error");
	int parts = lg_json_get(j, s, lg_json_get(j, s, cand, "content"), "parts"), um, fr, pf;
	struct lg_wst *w = r->w;
	uint32_t i;
	if (e >= 0) {
		int code = (int)lg_json_i64(j, s, lg_json_get(j, s, e, "code"));
		lg_ev(r, LG_EV_ERROR, code ? code : 502, lg_jesc(j, s, lg_json_get(j, s, e, "message")), LG_NOSTR, 0);
		return;
	}
	for (i = 0; lg_json_type(j, parts) == LG_J_ARR && i < j->t[parts].size; i++) {
		int p = lg_json_at(j, parts, i), t = lg_json_get(j, s, p, "text"), fc = lg_json_get(j, s, p, "functionCall");
		if (lg_json_type(j, t) == LG_J_STR && j->t[t].end > j->t[t].start)
			lg_ev(r, lg_json_truthy(j, lg_json_get(j, s, p, "thought")) ? LG_EV_REASONING : LG_EV_TEXT, 0,
			      lg_json_raw(j, s, t), LG_NOSTR, 0);
		if (fc >= 0) { /* a whole call in one part: a made-up id carries its signature */
			int args = lg_json_get(j, s, fc, "args");
			lg_str sig = lg_jesc(j, s, lg_json_get(j, s, p, "thoughtSignature"));
			char *id = (char *)lg_arena_alloc(&r->a, 16 + sig.n);
			size_t k, n;
			if (!id) return;
			n = (size_t)snprintf(id, 16, "call_%08x", (unsigned)(lg_rand(&r->gw->rng) & 0xffffffffu));
			if (sig.n) {
				id[n++] = '_';
				for (k = 0; k < sig.n; k++) /* base64 as URL-safe; escapes (\/) and padding left out */
					if (isalnum((unsigned char)sig.p[k]) || sig.p[k] == '+' || sig.p[k] == '/')
						id[n++] = sig.p[k] == '+' ? '-' : sig.p[k] == '/' ? '_' : sig.p[k];
			}
			w->calls++;
			lg_ev(r, LG_EV_TOOL, 1000 + w->calls, lg_str_of(id, n), lg_jesc(j, s, lg_json_get(j, s, fc, "name")), 0);
			lg_ev(r, LG_EV_ARGS, 1000 + w->calls, args >= 0 ? lg_json_span(j, s, args) : lg_str_of("{}", 2),
			      LG_NOSTR, 1);
		}
	}
	if ((um = lg_json_get(j, s, 0, "usageMetadata")) >= 0) { /* a running total: the last one counts */
		int64_t th = lg_json_i64(j, s, lg_json_get(j, s, um, "thoughtsTokenCount"));
		r->usage.prompt = lg_json_i64(j, s, lg_json_get(j, s, um, "promptTokenCount"));
		r->usage.completion = lg_json_i64(j, s, lg_json_get(j, s, um, "candidatesTokenCount")) + th;
		r->usage.reasoning = th;
		r->usage.cached = lg_json_i64(j, s, lg_json_get(j, s, um, "cachedContentTokenCount"));
		r->usage.cache_write = 0;
		lg_ev(r, LG_EV_USAGE, 0, LG_NOSTR, LG_NOSTR, 0);
	}
	fr = lg_json_get(j, s, cand, "finishReason");
	pf = lg_json_get(j, s, lg_json_get(j, s, 0, "promptFeedback"), "blockReason");
	if (lg_json_type(j, fr) == LG_J_STR) {
		int code = lg_fin_code(lg_json_raw(j, s, fr));
		lg_ev(r, LG_EV_FINISH, code == LG_FIN_STOP && w->calls ? LG_FIN_TOOLS : code, LG_NOSTR, LG_NOSTR, 0);
	} else if (pf >= 0) {
		lg_ev(r, LG_EV_FINISH, LG_FIN_FILTER, LG_NOSTR, LG_NOSTR, 0);
	}
}

static void lg_p_gemini_event(struct lg_req *r, lg_str ev, lg_str data)
{
	struct lg_json j;
	LG_UNUSED(ev);
	if (lg_p_event_json(r, &j, data)) lg_p_gemini_obj(r, &j, data.p);
}

static int lg_p_gemini_full(struct lg_req *r, const char *s, size_t n)
{
	struct lg_json j;
	memset(&j, 0, sizeof j);
	if (lg_req_json(r, &j, s, n) <= 0 || j.t[0].type != LG_J_OBJ) return -1;
	lg_p_gemini_obj(r, &j, s);
	lg_ev(r, LG_EV_END, 0, LG_NOSTR, LG_NOSTR, 0);
	return 0;
}

static const char *lg_prov_gemini_path(const struct lg_req *r, const struct lg_cand *cd, char *fast, size_t cap,
                                       struct lg_buf *pb)
{
	LG_UNUSED(fast), LG_UNUSED(cap);
	lg_buf_addz(pb, cd->prov->base_path);
	lg_buf_addz(pb, "/models/");
	lg_uri_enc(pb, cd->upstream, strlen(cd->upstream));
	lg_buf_addz(pb, r->ep == LG_EP_EMBED ? ":batchEmbedContents" : r->stream ? ":streamGenerateContent?alt=sse"
	                                                                        : ":generateContent");
	return lg_prov_path_of(pb);
}

static void lg_prov_gemini_auth(struct lg_hw *w, const struct lg_req *r, const struct lg_provider *p,
                                const char *path, const char *body, size_t n)
{
	LG_UNUSED(r), LG_UNUSED(path), LG_UNUSED(body), LG_UNUSED(n);
	lg_hw_line(w, "x-goog-api-key: ", p->api_key);
}

/* Gemini's embeddings: batchEmbedContents, one request per input. */
static void lg_prov_gemini_embed_body(struct lg_req *r, const struct lg_cand *cd, struct lg_buf *o)
{
	int in = lg_json_get(&r->j, r->body, 0, "input");
	uint32_t n = lg_json_type(&r->j, in) == LG_J_ARR ? r->j.t[in].size : 1, x;
	struct lg_buf mn; /* "models/<upstream>", escaped: the upstream name may come from the client */
	lg_buf_init(&mn, 0);
	lg_buf_addz(&mn, "models/");
	lg_buf_addz(&mn, cd->upstream);
	lg_buf_addz(o, "{\"requests\":[");
	for (x = 0; x < n; x++) {
		int t = lg_json_type(&r->j, in) == LG_J_ARR ? lg_json_at(&r->j, in, x) : in;
		lg_buf_addz(o, x ? ",{\"model\":" : "{\"model\":");
		lg_json_wstr(o, mn.p ? mn.p : "", mn.len);
		lg_buf_addz(o, ",\"content\":{\"parts\":[{\"text\":");
		lg_w_str(o, lg_jesc(&r->j, r->body, t));
		lg_buf_addz(o, "}]}}");
	}
	lg_buf_addz(o, "]}");
	if (mn.err) o->err = 1;
	lg_buf_free(&mn);
}

/* Gemini says when to retry in its error body: "retryDelay": "17s" */
static void lg_prov_gemini_retry_hint(struct lg_req *r, const char *b, size_t bn)
{
	const char *rd, *e = b + bn;
	double d = 0;
	if (!bn || !b || !(rd = lg_memfind(b, bn, "\"retryDelay\""))) return;
	rd += 12;
	while (rd < e && (*rd == ' ' || *rd == ':' || *rd == '"')) rd++;
	while (rd < e && *rd >= '0' && *rd <= '9') d = d * 10 + (*rd++ - '0');
	if (rd < e && *rd == '.') {
		double f = 0.1;
		for (rd++; rd < e && *rd >= '0' && *rd <= '9'; rd++, f /= 10) d += (*rd - '0') * f;
	}
	if (d > 0 && d < 3600) r->retry_after_ms = (int64_t)(d * 1000);
}

/* Gemini batchEmbedContents -> OpenAI embeddings. */
static int lg_p_gemini_embed(struct lg_req *r, const char *s, size_t n, struct lg_buf *o)
{
	struct lg_json j;
	int e;
	uint32_t i;
	memset(&j, 0, sizeof j);
	if (lg_req_json(r, &j, s, n) <= 0 || (e = lg_json_get(&j, s, 0, "embeddings")) < 0 ||
	    j.t[e].type != LG_J_ARR)
		return -1;
	lg_buf_addz(o, "{\"object\":\"list\",\"provider\":");
	lg_json_wz(o, r->served->prov->name);
	lg_buf_addz(o, ",\"data\":[");
	for (i = 0; i < j.t[e].size; i++) {
		int v = lg_json_get(&j, s, lg_json_at(&j, e, i), "values");
		lg_buf_printf(o, "%s{\"object\":\"embedding\",\"index\":%u,\"embedding\":", i ? "," : "", i);
		if (lg_json_type(&j, v) == LG_J_ARR && lg_resp_b64(r)) { /* the numbers as float32s */
			uint32_t k, nv = j.t[v].size;
			double *vec = (double *)malloc((nv ? nv : 1) * sizeof *vec);
			int x = v + 1;
			if (!vec) return -1;
			for (k = 0; k < nv; k++, x = (int)j.t[x].next) vec[k] = lg_json_num(&j, s, x, 0);
			lg_resp_vector(o, vec, nv);
			free(vec);
		} else {
			lg_buf_adds(o, v >= 0 ? lg_json_span(&j, s, v) : lg_str_of("[]", 2));
		}
		lg_buf_addc(o, '}');
	}
	lg_buf_addz(o, "],\"model\":");
	lg_json_wz(o, r->served->model);
	r->usage.prompt = r->prompt_est; /* Gemini does not count embedding tokens back */
	lg_ev_acct(r, LG_EV_USAGE, 0, LG_NOSTR);
	lg_buf_printf(o, ",\"usage\":{\"prompt_tokens\":%lld,\"total_tokens\":%lld,\"cost\":", (long long)r->usage.prompt,
	              (long long)r->usage.prompt);
	lg_json_wnum(o, r->usage.cost);
	lg_buf_addz(o, "}}");
	return o->err ? -1 : 1;
}

/* --- 11i. provider bedrock: path, SigV4, Converse body, parser, event-stream frames --- */

/* Bedrock Converse from canonical. -2 (a 400) for what it cannot take. */
static int lg_w_bedrock(struct lg_req *r, const struct lg_cand *cd, struct lg_buf *o)
{
	const struct lg_creq *q = r->creq;
	int i, end, first = 1;
	char num[64];
	if (q->thinking) lg_canon_drop(r, "thinking"); /* Converse has no portable field for it */
	lg_buf_addc(o, '{');
	lg_w_system(o, q, "\"system\":[", "{\"text\":", "],", 1);
	lg_buf_addz(o, "\"messages\":[");
	for (i = 0; i < q->nm; i = end) {
		int role = q->m[i].role, c = 0;
		struct lg_w_pit it = {0, 0};
		const struct lg_cpart *p;
		end = lg_w_turn(q, i);
		if (role == LG_R_SYSTEM) continue; /* folded into system */
		lg_buf_addz(o, first ? "{\"role\":" : ",{\"role\":");
		first = 0;
		lg_buf_addz(o, role == LG_R_USER ? "\"user\",\"content\":[" : "\"assistant\",\"content\":[");
		while ((p = lg_w_part(q, i, end, &it))) {
			if (p->type == LG_P_THINKING) continue;
			if (p->type == LG_P_IMAGE && !p->data.n) {
				snprintf(r->canon_err, sizeof r->canon_err,
				         "provider %s (bedrock) does not take image URLs: send the image as a data: URL",
				         cd->prov->name);
				return -2;
			}
			if (c++) lg_buf_addc(o, ',');
			switch (p->type) {
			case LG_P_TEXT:
				lg_buf_addz(o, "{\"text\":");
				lg_w_str(o, p->text);
				lg_buf_addc(o, '}');
				break;
			case LG_P_IMAGE: {
				lg_str fmt = p->media;
				if (fmt.n > 6 && memcmp(fmt.p, "image/", 6) == 0) fmt.p += 6, fmt.n -= 6;
				lg_buf_addz(o, "{\"image\":{\"format\":");
				lg_w_str(o, lg_str_eq(fmt, "jpg") ? lg_str_of("jpeg", 4) : fmt);
				lg_buf_addz(o, ",\"source\":{\"bytes\":");
				lg_w_str(o, p->data);
				lg_buf_addz(o, "}}}");
				break;
			}
			case LG_P_TOOL_CALL:
				lg_buf_addz(o, "{\"toolUse\":{\"toolUseId\":");
				lg_w_str(o, p->id);
				lg_buf_addz(o, ",\"name\":");
				lg_w_str(o, p->name);
				lg_buf_addz(o, ",\"input\":");
				lg_buf_adds(o, p->args);
				lg_buf_addz(o, "}}");
				break;
			default:
				lg_buf_addz(o, "{\"toolResult\":{\"toolUseId\":");
				lg_w_str(o, p->id);
				lg_buf_addz(o, ",\"content\":[{\"text\":");
				lg_w_str(o, p->text);
				lg_buf_printf(o, "}],\"status\":\"%s\"}}", p->is_error ? "error" : "success");
			}
		}
		if (!c) lg_buf_addz(o, "{\"text\":\" \"}");
		lg_buf_addz(o, "]}");
	}
	lg_buf_addc(o, ']');
	lg_buf_printf(o, ",\"inferenceConfig\":{\"maxTokens\":%lld", (long long)lg_w_max_tokens(cd, q));
	if (lg_w_num_or(q->temperature, num, sizeof num, 1)) lg_buf_printf(o, ",\"temperature\":%s", num);
	if (lg_w_num_or(q->top_p, num, sizeof num, 0)) lg_buf_printf(o, ",\"topP\":%s", num);
	lg_w_stops(o, q, ",\"stopSequences\":[", q->nstop, 0);
	lg_buf_addc(o, '}');
	r->rf_tool = 0;
	if ((q->ntools && q->tool_choice != LG_TC_NONE) || lg_w_has_calls(q) || (q->rf && !q->ntools)) {
		static const struct lg_w_spell sp = {"{\"toolSpec\":{\"name\":", ",\"description\":",
		                                     ",\"inputSchema\":{\"json\":", "}}}", 1, 2, 0};
		lg_buf_addz(o, ",\"toolConfig\":{\"tools\":[");
		lg_w_tools(r, o, &sp); /* response_format: a forced tool, as for Anthropic; the history's tools too */
		lg_buf_addc(o, ']');
		if (r->rf_tool)
			lg_buf_addz(o, ",\"toolChoice\":{\"tool\":{\"name\":\"" LG_RF_TOOL "\"}}");
		else if (q->tool_choice == LG_TC_REQUIRED)
			lg_buf_addz(o, ",\"toolChoice\":{\"any\":{}}");
		else if (q->tool_choice == LG_TC_FUNC) {
			lg_buf_addz(o, ",\"toolChoice\":{\"tool\":{\"name\":");
			lg_w_str(o, q->tool_name);
			lg_buf_addz(o, "}}");
		} else if (q->ntools)
			lg_buf_addz(o, ",\"toolChoice\":{\"auto\":{}}");
		lg_buf_addc(o, '}');
	}
	lg_buf_addc(o, '}');
	return 0;
}

static void lg_p_bedrock_usage(struct lg_req *r, const struct lg_json *j, const char *s, int u)
{
	int64_t cr = lg_json_i64(j, s, lg_json_get(j, s, u, "cacheReadInputTokens")),
	        cw = lg_json_i64(j, s, lg_json_get(j, s, u, "cacheWriteInputTokens"));
	if (u < 0) return;
	r->usage.prompt = lg_json_i64(j, s, lg_json_get(j, s, u, "inputTokens")) + cr + cw;
	r->usage.completion = lg_json_i64(j, s, lg_json_get(j, s, u, "outputTokens"));
	r->usage.cached = cr;
	r->usage.cache_write = cw;
	lg_ev(r, LG_EV_USAGE, 0, LG_NOSTR, LG_NOSTR, 0);
}

static int lg_p_bedrock_full(struct lg_req *r, const char *s, size_t n)
{
	struct lg_json j;
	int c, sr;
	uint32_t i;
	memset(&j, 0, sizeof j);
	if (lg_req_json(r, &j, s, n) <= 0 || j.t[0].type != LG_J_OBJ) return -1;
	c = lg_json_get(&j, s, lg_json_get(&j, s, lg_json_get(&j, s, 0, "output"), "message"), "content");
	for (i = 0; lg_json_type(&j, c) == LG_J_ARR && i < j.t[c].size; i++) {
		int b = lg_json_at(&j, c, i), t = lg_json_get(&j, s, b, "text"), tu = lg_json_get(&j, s, b, "toolUse");
		int rc = lg_json_get(&j, s, lg_json_get(&j, s, b, "reasoningContent"), "reasoningText");
		if (lg_json_type(&j, t) == LG_J_STR) lg_ev(r, LG_EV_TEXT, 0, lg_json_raw(&j, s, t), LG_NOSTR, 0);
		if (rc >= 0) {
			lg_ev(r, LG_EV_REASONING, 0, lg_jesc(&j, s, lg_json_get(&j, s, rc, "text")), LG_NOSTR, 0);
			lg_ev(r, LG_EV_SIG, 0, lg_jesc(&j, s, lg_json_get(&j, s, rc, "signature")), LG_NOSTR, 0);
		}
		if (tu >= 0 && r->rf_tool && lg_str_eq(lg_jesc(&j, s, lg_json_get(&j, s, tu, "name")), LG_RF_TOOL)) {
			int in = lg_json_get(&j, s, tu, "input"); /* response_format: the input is the answer */
			if (in >= 0) lg_ev(r, LG_EV_TEXT, 0, lg_canon_esc(r, lg_json_span(&j, s, in)), LG_NOSTR, 0);
		} else if (tu >= 0) {
			int in = lg_json_get(&j, s, tu, "input");
			lg_ev(r, LG_EV_TOOL, (int)i, lg_jesc(&j, s, lg_json_get(&j, s, tu, "toolUseId")),
			      lg_jesc(&j, s, lg_json_get(&j, s, tu, "name")), 0);
			lg_ev(r, LG_EV_ARGS, (int)i, in >= 0 ? lg_json_span(&j, s, in) : lg_str_of("{}", 2), LG_NOSTR, 1);
		}
	}
	lg_p_bedrock_usage(r, &j, s, lg_json_get(&j, s, 0, "usage"));
	sr = lg_json_get(&j, s, 0, "stopReason");
	if (lg_json_type(&j, sr) == LG_J_STR) {
		lg_str v = lg_json_raw(&j, s, sr);
		lg_ev(r, LG_EV_FINISH, lg_str_eq(v, "end_turn") || r->rf_tool ? LG_FIN_STOP : lg_fin_code(v), LG_NOSTR,
		      LG_NOSTR, 0);
	}
	lg_ev(r, LG_EV_END, 0, LG_NOSTR, LG_NOSTR, 0);
	return 0;
}

/* One ConverseStream event (its :event-type and JSON payload). */
static void lg_p_bedrock_event(struct lg_req *r, lg_str type, lg_str data)
{
	struct lg_wst *w = r->w;
	struct lg_json j;
	const char *s = data.p;
	int idx, d;
	if (!lg_p_event_json(r, &j, data)) return;
	idx = (int)lg_json_i64(&j, s, lg_json_get(&j, s, 0, "contentBlockIndex"));
	if (lg_str_eq(type, "contentBlockStart")) {
		int tu = lg_json_get(&j, s, lg_json_get(&j, s, 0, "start"), "toolUse");
		lg_str name = lg_jesc(&j, s, lg_json_get(&j, s, tu, "name"));
		if (tu >= 0 && w) {
			w->pblk[idx % LG_MAX_TOOLS] = r->rf_tool && lg_str_eq(name, LG_RF_TOOL) ? 3 : 1;
			w->pargs[idx % LG_MAX_TOOLS] = 0;
		}
		if (tu >= 0 && !(w && w->pblk[idx % LG_MAX_TOOLS] == 3))
			lg_ev(r, LG_EV_TOOL, idx, lg_jesc(&j, s, lg_json_get(&j, s, tu, "toolUseId")), name, 0);
	} else if (lg_str_eq(type, "contentBlockDelta")) {
		int rc;
		d = lg_json_get(&j, s, 0, "delta");
		rc = lg_json_get(&j, s, d, "reasoningContent");
		if (lg_json_get(&j, s, d, "text") >= 0) {
			lg_ev(r, LG_EV_TEXT, 0, lg_jesc(&j, s, lg_json_get(&j, s, d, "text")), LG_NOSTR, 0);
		} else if (lg_json_get(&j, s, d, "toolUse") >= 0) {
			lg_str in = lg_jesc(&j, s, lg_json_get(&j, s, lg_json_get(&j, s, d, "toolUse"), "input"));
			if (w && w->pblk[idx % LG_MAX_TOOLS] == 3) {
				lg_ev(r, LG_EV_TEXT, 0, in, LG_NOSTR, 0); /* the forced response_format tool: text */
			} else if (in.n) {
				lg_ev(r, LG_EV_ARGS, idx, in, LG_NOSTR, 0);
				if (w) w->pargs[idx % LG_MAX_TOOLS] = 1;
			}
		} else if (rc >= 0) {
			int t = lg_json_get(&j, s, rc, "text"), sg = lg_json_get(&j, s, rc, "signature");
			if (t >= 0) lg_ev(r, LG_EV_REASONING, 0, lg_jesc(&j, s, t), LG_NOSTR, 0);
			if (sg >= 0) lg_ev(r, LG_EV_SIG, 0, lg_jesc(&j, s, sg), LG_NOSTR, 0);
		}
	} else if (lg_str_eq(type, "contentBlockStop")) {
		if (w && w->pblk[idx % LG_MAX_TOOLS] == 1 && !w->pargs[idx % LG_MAX_TOOLS]) /* a tool that got no input */
			lg_ev(r, LG_EV_ARGS, idx, lg_str_of("{}", 2), LG_NOSTR, 1);
		if (w) w->pblk[idx % LG_MAX_TOOLS] = 0;
	} else if (lg_str_eq(type, "messageStop")) {
		lg_str v = lg_jesc(&j, s, lg_json_get(&j, s, 0, "stopReason"));
		lg_ev(r, LG_EV_FINISH, lg_str_eq(v, "end_turn") || r->rf_tool ? LG_FIN_STOP : lg_fin_code(v), LG_NOSTR,
		      LG_NOSTR, 0);
	} else if (lg_str_eq(type, "metadata")) {
		lg_p_bedrock_usage(r, &j, s, lg_json_get(&j, s, 0, "usage"));
	}
}

/* AWS event-stream frames: total_len u32 | headers_len u32 | prelude CRC |
 * headers | payload | message CRC, all big-endian, read byte by byte so
 * host byte order and alignment never matter. Returns the frame length,
 * 0 while incomplete, -1 when a CRC or a length is wrong. */
static uint32_t lg_be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

struct lg_evframe {
	lg_str event_type, message_type, exception_type, payload;
	lg_str error_code, error_message; /* a message-type "error" frame's */
};

static long lg_evstream_frame(const unsigned char *b, size_t n, struct lg_evframe *f)
{
	uint32_t total, hl;
	size_t i;
	memset(f, 0, sizeof *f);
	if (n < 12) return 0;
	total = lg_be32(b);
	hl = lg_be32(b + 4);
	if (total < 16 || hl > total - 16 || total > (16u << 20)) return -1;
	if (lg_crc32(0, b, 8) != lg_be32(b + 8)) return -1;
	if (n < total) return 0;
	if (lg_crc32(0, b, total - 4) != lg_be32(b + total - 4)) return -1;
	for (i = 12; i < 12 + (size_t)hl;) { /* headers: name, type, value */
		size_t nl = b[i], vl;
		lg_str name;
		int ty;
		if (i + 1 + nl + 1 > 12 + (size_t)hl) return -1;
		name = lg_str_of((const char *)b + i + 1, nl);
		i += 1 + nl;
		ty = b[i++];
		switch (ty) {
		case 0: case 1: vl = 0; break;
		case 2: vl = 1; break;
		case 3: vl = 2; break;
		case 4: vl = 4; break;
		case 5: case 8: vl = 8; break;
		case 9: vl = 16; break;
		case 6: case 7:
			if (i + 2 > 12 + (size_t)hl) return -1;
			vl = (size_t)b[i] << 8 | b[i + 1];
			i += 2;
			if (ty == 7) {
				lg_str v = lg_str_of((const char *)b + i, vl);
				if (lg_str_eq(name, ":event-type")) f->event_type = v;
				if (lg_str_eq(name, ":message-type")) f->message_type = v;
				if (lg_str_eq(name, ":exception-type")) f->exception_type = v;
				if (lg_str_eq(name, ":error-code")) f->error_code = v;
				if (lg_str_eq(name, ":error-message")) f->error_message = v;
			}
			break;
		default: return -1;
		}
		i += vl;
		if (i > 12 + (size_t)hl) return -1;
	}
	f->payload = lg_str_of((const char *)b + 12 + hl, total - 16 - hl);
	return (long)total;
}

/* SigV4 for Bedrock: the signature over the canonical request of a POST
 * with host, x-amz-date and (with a session) x-amz-security-token signed. */
static void lg_prov_bedrock_sign(const struct lg_provider *p, const char *host, const char *path, const char *body, size_t bn,
                     int64_t wall, struct lg_buf *hdr)
{
	char amzdate[20], day[9], hex[65], sig[65];
	unsigned char h[32], k1[32], k2[32];
	struct lg_buf cr, sts;
	time_t t = (time_t)(wall / 1000);
	struct tm tm;
	const char *region = p->aws_region ? p->aws_region : "us-east-1", *sl;
	gmtime_r(&t, &tm);
	strftime(amzdate, sizeof amzdate, "%Y%m%dT%H%M%SZ", &tm);
	memcpy(day, amzdate, 8);
	day[8] = 0;
	lg_buf_init(&cr, 0);
	lg_buf_addz(&cr, "POST\n");
	for (sl = path; *sl;) { /* each segment encoded again */
		const char *e = strchr(sl + 1, '/');
		size_t n = e ? (size_t)(e - sl) : strlen(sl);
		lg_buf_addc(&cr, '/');
		lg_uri_enc(&cr, sl + 1, n - 1);
		sl += n;
	}
	lg_buf_printf(&cr, "\n\nhost:%s\nx-amz-date:%s\n", host, amzdate);
	if (p->aws_session_token) lg_buf_printf(&cr, "x-amz-security-token:%s\n", p->aws_session_token);
	lg_buf_printf(&cr, "\nhost;x-amz-date%s\n", p->aws_session_token ? ";x-amz-security-token" : "");
	lg_sha256(body, bn, h);
	lg_hex32(h, hex);
	lg_buf_addz(&cr, hex);
	lg_sha256(cr.p, cr.len, h);
	lg_hex32(h, hex);
	lg_buf_init(&sts, 0);
	lg_buf_printf(&sts, "AWS4-HMAC-SHA256\n%s\n%s/%s/bedrock/aws4_request\n%s", amzdate, day, region, hex);
	lg_sigv4_key(p->aws_secret_access_key, day, region, "bedrock", k1);
	lg_hmac_sha256(k1, 32, sts.p, sts.len, k2);
	lg_hex32(k2, sig);
	lg_buf_printf(hdr,
	         "X-Amz-Date: %s\r\n%s%s%sAuthorization: AWS4-HMAC-SHA256 Credential=%s/%s/%s/bedrock/aws4_request, "
	         "SignedHeaders=host;x-amz-date%s, Signature=%s\r\n",
	         amzdate, p->aws_session_token ? "X-Amz-Security-Token: " : "",
	         p->aws_session_token ? p->aws_session_token : "", p->aws_session_token ? "\r\n" : "",
	         p->aws_access_key_id, day, region, p->aws_session_token ? ";x-amz-security-token" : "", sig);
	lg_buf_free(&cr);
	lg_buf_free(&sts);
}

static const char *lg_prov_bedrock_check(const struct lg_provider *p)
{
	return p->api_key || (p->aws_access_key_id && p->aws_secret_access_key)
	           ? NULL : "api_key, or aws_access_key_id and aws_secret_access_key";
}

static const char *lg_prov_bedrock_path(const struct lg_req *r, const struct lg_cand *cd, char *fast, size_t cap,
                                        struct lg_buf *pb)
{
	LG_UNUSED(fast), LG_UNUSED(cap);
	lg_buf_addz(pb, cd->prov->base_path);
	lg_buf_addz(pb, "/model/");
	lg_uri_enc(pb, cd->upstream, strlen(cd->upstream));
	lg_buf_addz(pb, r->stream ? "/converse-stream" : "/converse");
	return lg_prov_path_of(pb);
}

/* SigV4: date, token, credential, signature */
static size_t lg_prov_bedrock_auth_room(const struct lg_provider *p)
{
	if (!p->aws_access_key_id) return 0;
	return 400 + strlen(p->aws_access_key_id) + (p->aws_region ? strlen(p->aws_region) : 9) +
	       (p->aws_session_token ? strlen(p->aws_session_token) + 32 : 0);
}

/* SigV4 with access keys, else the API key as a bearer token. */
static void lg_prov_bedrock_auth(struct lg_hw *w, const struct lg_req *r, const struct lg_provider *p,
                                 const char *path, const char *body, size_t n)
{
	struct lg_buf sig;
	LG_UNUSED(r);
	if (!p->aws_access_key_id || !p->aws_secret_access_key) {
		lg_hw_line(w, "Authorization: Bearer ", p->api_key);
		return;
	}
	lg_buf_init(&sig, 0);
	lg_prov_bedrock_sign(p, p->hosthdr, path, body, n, lg_wall_ms(), &sig);
	if (sig.err)
		w->at = w->cap + 1;
	else
		lg_hw_n(w, sig.p, sig.len);
	lg_buf_free(&sig);
}

/* Bedrock's stream errors come as 424 too. */
static int lg_prov_bedrock_retryable(int status, const char *b, size_t n)
{
	return status == 424 || lg_prov_retryable(status, b, n);
}

/* AWS event-stream frames (Bedrock): an exception frame is an error,
 * a throttling one a 429. */
static long lg_frame_aws(struct lg_req *r, const char *p, size_t n, const char **err)
{
	struct lg_evframe f;
	long fl = lg_evstream_frame((const unsigned char *)p, n, &f);
	if (fl < 0) *err = "a damaged event-stream frame (CRC or length)";
	if (fl <= 0) return fl;
	if (lg_str_eq(f.message_type, "exception") || lg_str_eq(f.message_type, "error")) {
		/* an exception names its type in a header and says why in a JSON payload
		 * {"message": ...}; an error frame has both in headers */
		lg_str ty = f.exception_type.n ? f.exception_type : f.error_code, why = f.error_message;
		char m[300];
		struct lg_json j;
		memset(&j, 0, sizeof j);
		if (!why.n && f.payload.n && lg_req_json(r, &j, f.payload.p, f.payload.n) > 0 && j.t[0].type == LG_J_OBJ)
			why = lg_jesc(&j, f.payload.p, lg_json_get(&j, f.payload.p, 0, "message")); /* escaped: m is too */
		if (!why.n) why = f.payload;
		snprintf(m, sizeof m, "%.*s: %.*s", (int)LG_MIN(ty.n, 80), ty.p, (int)LG_MIN(why.n, 200), why.p);
		lg_ev(r, LG_EV_ERROR, lg_memmem(ty.p, ty.n, "hrottl") ? 429 : 502,
		      why.p == f.payload.p || why.p == f.error_message.p ? lg_canon_esc(r, lg_strz(m)) : lg_strz(m), LG_NOSTR,
		      0);
	} else {
		lg_ev_in(r, f.event_type, f.payload);
	}
	return fl;
}

/* --- 11j. provider mock: answers built in, no network -------------------- */

/* The reply text: deterministic, built from the last user message (of
 * the canonical request when the client's dialect has no messages). */
static LG_COLD void lg_prov_mock_reply(struct lg_req *r, struct lg_buf *text, int64_t *prompt_tokens)
{
	const struct lg_json *j = &r->j;
	int msgs = lg_json_get(j, r->body, 0, "messages");
	uint32_t i;
	int64_t pt = 3;
	lg_str last = lg_str_of("", 0);
	if (msgs < 0 && r->creq) {
		const struct lg_creq *q = r->creq;
		int k, x;
		for (k = 0; k < q->nsys; k++) pt += 4 + (int64_t)(q->sys[k].text.n + 3) / 4;
		for (k = 0; k < q->nm; k++) {
			lg_str txt = lg_str_of("", 0);
			for (x = 0; x < q->m[k].np; x++)
				if (q->m[k].p[x].type == LG_P_TEXT) txt = q->m[k].p[x].text;
			pt += 4 + (int64_t)(txt.n + 3) / 4;
			if (q->m[k].role == LG_R_USER) last = txt;
		}
	}
	for (i = 0; msgs >= 0 && i < j->t[msgs].size; i++) {
		int m = lg_json_at(j, msgs, i), c = lg_json_get(j, r->body, m, "content");
		lg_str role = lg_json_raw(j, r->body, lg_json_get(j, r->body, m, "role"));
		lg_str txt = lg_str_of("", 0);
		if (lg_json_type(j, c) == LG_J_STR) {
			txt = lg_json_raw(j, r->body, c);
		} else if (lg_json_type(j, c) == LG_J_ARR) {
			uint32_t q;
			for (q = 0; q < j->t[c].size; q++) {
				int t = lg_json_get(j, r->body, lg_json_at(j, c, q), "text");
				if (lg_json_type(j, t) == LG_J_STR) txt = lg_json_raw(j, r->body, t);
			}
		}
		pt += 4 + (int64_t)(txt.n + 3) / 4;
		if (lg_str_eq(role, "user")) last = txt;
	}
	lg_buf_addz(text, "This is a mock reply from llmgw. You said: ");
	{
		char tmp[200];
		long un = lg_json_unescape(last.p, LG_MIN(last.n, sizeof tmp), tmp);
		/* the cut may land inside an escape: unescape what parses */
		while (un < 0 && last.n && LG_MIN(last.n, sizeof tmp) > 0) {
			last.n = LG_MIN(last.n, sizeof tmp) - 1;
			un = lg_json_unescape(last.p, last.n, tmp);
		}
		/* do not end inside a UTF-8 sequence */
		while (un > 0 && ((unsigned char)tmp[un - 1] & 0xC0) == 0x80) un--;
		if (un > 0 && (unsigned char)tmp[un - 1] >= 0xC0) un--;
		if (un > 0) lg_buf_add(text, tmp, (size_t)un);
	}
	*prompt_tokens = pt;
}

static LG_COLD void lg_prov_mock_chat(struct lg_req *r, struct lg_buf *o)
{
	struct lg_buf text;
	int64_t pt = 0, ct, maxt;
	const char *finish = "stop";
	char idb[64];
	long long created = (long long)(lg_wall_ms() / 1000);
	lg_buf_init(&text, 0);
	lg_prov_mock_reply(r, &text, &pt);
	maxt = lg_json_i64(&r->j, r->body, lg_json_get(&r->j, r->body, 0, "max_completion_tokens"));
	if (!maxt) maxt = lg_json_i64(&r->j, r->body, lg_json_get(&r->j, r->body, 0, "max_tokens"));
	if (!maxt) maxt = r->max_out; /* max_output_tokens (Responses) */
	if (maxt && (int64_t)text.len > maxt * 4) {
		text.len = (size_t)maxt * 4;
		while (text.len && ((unsigned char)text.p[text.len] & 0xC0) == 0x80) text.len--;
		finish = "length";
	}
	ct = ((int64_t)text.len + 3) / 4;
	snprintf(idb, sizeof idb, "chatcmpl-mock-%s", r->id);
	if (!r->stream) {
		lg_buf_printf(o, "{\"id\":\"%s\",\"object\":\"chat.completion\",\"created\":%lld,\"model\":",
		              idb, created);
		lg_json_wz(o, r->served->upstream);
		lg_buf_addz(o, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
		lg_json_wstr(o, text.p, text.len);
		lg_buf_printf(o, "},\"finish_reason\":\"%s\"}],\"usage\":{\"prompt_tokens\":%lld,"
		                 "\"completion_tokens\":%lld,\"total_tokens\":%lld,\"prompt_tokens_details\":"
		                 "{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}",
		              finish, (long long)pt, (long long)ct, (long long)(pt + ct));
	} else {
		size_t i = 0;
		struct lg_buf pre;
		lg_buf_init(&pre, 0);
		lg_buf_printf(&pre, "{\"id\":\"%s\",\"object\":\"chat.completion.chunk\",\"created\":%lld,\"model\":",
		              idb, created);
		lg_json_wz(&pre, r->served->upstream);
		lg_buf_addz(&pre, ",\"choices\":[{\"index\":0,\"delta\":");
		lg_buf_printf(o, "data: %.*s{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
		              (int)pre.len, pre.p);
		while (i < text.len) { /* one event per word */
			size_t e = i + 1;
			while (e < text.len && text.p[e] != ' ') e++;
			lg_buf_printf(o, "data: %.*s{\"content\":", (int)pre.len, pre.p);
			lg_json_wstr(o, text.p + i, e - i);
			lg_buf_addz(o, "},\"finish_reason\":null}]}\n\n");
			i = e;
		}
		lg_buf_printf(o, "data: %.*s{},\"finish_reason\":\"%s\"}]}\n\n", (int)pre.len, pre.p, finish);
		pre.len -= strlen(",\"choices\":[{\"index\":0,\"delta\":");
		lg_buf_printf(o, "data: %.*s,\"choices\":[],\"usage\":{\"prompt_tokens\":%lld,"
		                 "\"completion_tokens\":%lld,\"total_tokens\":%lld,\"prompt_tokens_details\":"
		                 "{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n"
		                 "data: [DONE]\n\n",
		              (int)pre.len, pre.p, (long long)pt, (long long)ct, (long long)(pt + ct));
		lg_buf_free(&pre);
	}
	lg_buf_free(&text);
}

/* Embeddings: 8 numbers per input, derived from its SHA-256. */
static LG_COLD void lg_prov_mock_embed(struct lg_req *r, struct lg_buf *o)
{
	const struct lg_json *j = &r->j;
	int in = lg_json_get(j, r->body, 0, "input");
	uint32_t i, n = lg_json_type(j, in) == LG_J_ARR ? j->t[in].size : 1;
	int64_t pt = 0;
	lg_buf_addz(o, "{\"object\":\"list\",\"data\":[");
	for (i = 0; i < n; i++) {
		int t = lg_json_type(j, in) == LG_J_ARR ? lg_json_at(j, in, i) : in;
		lg_str txt = t >= 0 ? lg_json_raw(j, r->body, t) : lg_str_of("", 0);
		unsigned char h[32];
		double v[8];
		int d;
		lg_sha256(txt.p, txt.n, h);
		pt += (int64_t)(txt.n + 3) / 4 + 1;
		lg_buf_printf(o, "%s{\"object\":\"embedding\",\"index\":%u,\"embedding\":", i ? "," : "", i);
		for (d = 0; d < 8; d++) v[d] = ((int)h[d] - 128) / 128.0;
		if (lg_resp_b64(r)) {
			lg_resp_vector(o, v, 8);
		} else {
			lg_buf_addc(o, '[');
			for (d = 0; d < 8; d++) lg_buf_printf(o, "%s%.6f", d ? "," : "", v[d]);
			lg_buf_addc(o, ']');
		}
		lg_buf_addc(o, '}');
	}
	lg_buf_addz(o, "],\"model\":");
	lg_json_wz(o, r->served->upstream);
	lg_buf_printf(o, ",\"usage\":{\"prompt_tokens\":%lld,\"total_tokens\":%lld}}", (long long)pt,
	              (long long)pt);
}

static void lg_prov_mock_run(struct lg_req *r, struct lg_buf *o)
{
	if (r->ep == LG_EP_EMBED)
		lg_prov_mock_embed(r, o);
	else
		lg_prov_mock_chat(r, o);
}

/* --- 11k. the provider rows ---------------------------------------------- */

/* Providers are data: one row per type (struct lg_prov_row, section 5).
 * A new provider is a row here, its functions above, its tests. */
#define LG_SSE "text/event-stream"
static const struct lg_prov_row lg_prov_rows[] = {
    {"openai", "https://api.openai.com/v1", LG_WIRE_OPENAI, LG_CAP_EMBED, 2500, LG_SSE, LG_SSE, "\n\n", NULL,
     lg_prov_openai_path, NULL, lg_prov_bearer_auth, lg_w_openai, lg_frame_sse, lg_p_openai_event,
     lg_p_openai_full, NULL, NULL, NULL, lg_prov_retryable, NULL},
    {"anthropic", "https://api.anthropic.com", LG_WIRE_ANTHROPIC, 0, 1600, LG_SSE, LG_SSE, "\n\n", NULL,
     lg_prov_anth_path, NULL, lg_prov_anth_auth, lg_w_anthropic, lg_frame_sse, lg_p_anth_event, lg_p_anth_full,
     NULL, NULL, NULL, lg_prov_retryable, NULL},
    {"gemini", "https://generativelanguage.googleapis.com/v1beta", LG_WIRE_GEMINI, LG_CAP_EMBED, 8 * 258, LG_SSE,
     LG_SSE, "\n\n", NULL, lg_prov_gemini_path, NULL, lg_prov_gemini_auth, lg_w_gemini, lg_frame_sse,
     lg_p_gemini_event, lg_p_gemini_full, lg_prov_gemini_embed_body, lg_p_gemini_embed, lg_prov_gemini_retry_hint,
     lg_prov_retryable, NULL},
    {"azure", NULL, LG_WIRE_OPENAI, LG_CAP_EMBED, 2500, LG_SSE, LG_SSE, "\n\n", NULL, lg_prov_azure_path, NULL,
     lg_prov_azure_auth, lg_w_openai, lg_frame_sse, lg_p_openai_event, lg_p_openai_full, NULL, NULL, NULL,
     lg_prov_retryable, NULL},
    {"bedrock", "https://bedrock-runtime.%s.amazonaws.com", LG_WIRE_BEDROCK, 0, 1600,
     "application/vnd.amazon.eventstream", NULL, NULL, lg_prov_bedrock_check, lg_prov_bedrock_path,
     lg_prov_bedrock_auth_room, lg_prov_bedrock_auth, lg_w_bedrock, lg_frame_aws, lg_p_bedrock_event,
     lg_p_bedrock_full, NULL, NULL, NULL, lg_prov_bedrock_retryable, NULL},
    {"mock", NULL, LG_WIRE_OPENAI, LG_CAP_EMBED, 2500, LG_SSE, LG_SSE, "\n\n", NULL, lg_prov_openai_path, NULL,
     lg_prov_bearer_auth, lg_w_openai, lg_frame_sse, lg_p_openai_event, lg_p_openai_full, NULL, NULL, NULL,
     lg_prov_retryable, lg_prov_mock_run},
};
#undef LG_SSE

static const struct lg_prov_row *lg_prov_row_find(lg_str name)
{
	size_t i;
	for (i = 0; i < LG_COUNTOF(lg_prov_rows); i++)
		if (lg_str_eq(name, lg_prov_rows[i].name)) return &lg_prov_rows[i];
	return NULL;
}

/* "openai, anthropic, ...": for the config's error message */
static const char *lg_prov_row_names(void)
{
	static char names[200];
	size_t i, at = 0;
	if (!names[0])
		for (i = 0; i < LG_COUNTOF(lg_prov_rows); i++)
			at += lg_cpy(names + at, sizeof names - at, i ? ", " : ""),
			    at += lg_cpy(names + at, sizeof names - at, lg_prov_rows[i].name);
	return names;
}

/* --- 11l. client dialects: errors, stream writers, final answers, native rewrites, the rows --- */

/* {"error":{"message","type","param","code"}} */
static LG_COLD void lg_d_oa_error(struct lg_buf *b, int status, const char *msg)
{
	lg_buf_addz(b, "{\"error\":{\"message\":");
	lg_json_wz(b, msg);
	lg_buf_printf(b, ",\"type\":\"%s\",\"param\":null,\"code\":%d}}\n", lg_resp_err_type(status), status);
}

/* {"type":"error","error":{"type","message"}} */
static LG_COLD void lg_d_an_error(struct lg_buf *b, int status, const char *msg)
{
	const char *t = status == 529 ? "overloaded_error" : status == 413 ? "request_too_large"
	                : status == 402 ? "billing_error" : status == 404 ? "not_found_error"
	                : status >= 500 ? "api_error" : lg_resp_err_type(status);
	lg_buf_printf(b, "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":", t);
	lg_json_wz(b, msg);
	lg_buf_addz(b, "}}\n");
}

static void lg_d_free(struct lg_wst *w)
{
	int i;
	for (i = 0; i < w->ntools; i++) lg_buf_free(&w->tools[i].args);
	lg_buf_free(&w->text);
	lg_buf_free(&w->reasoning);
	lg_buf_free(&w->sig);
	free(w->items);
	w->items = NULL;
	w->nitems = w->items_cap = 0;
}

static LG_COLD void lg_d_oa_stream_error(struct lg_req *r, const char *msg)
{
	struct lg_buf b;
	lg_buf_init(&b, 0);
	lg_buf_addz(&b, "{\"error\":{\"message\":");
	lg_json_wz(&b, msg);
	lg_buf_addz(&b, ",\"type\":\"upstream_error\",\"code\":502}}");
	lg_resp_sse(r, NULL, b.p, b.len);
	lg_buf_free(&b);
}

static LG_COLD void lg_d_an_stream_error(struct lg_req *r, const char *msg)
{
	struct lg_buf b;
	lg_buf_init(&b, 0);
	lg_buf_addz(&b, "{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":");
	lg_json_wz(&b, msg);
	lg_buf_addz(&b, "}}");
	lg_resp_sse(r, "error", b.p, b.len);
	lg_buf_free(&b);
}

static int lg_d_tool_of(struct lg_wst *w, int pidx)
{
	int i;
	for (i = 0; i < w->ntools; i++)
		if (w->tools[i].pidx == pidx) return i;
	return -1;
}

/* Usage in the Anthropic dialect from the normalized one. */
static void lg_d_an_usage(struct lg_buf *b, const struct lg_usage *u, int cost)
{
	int64_t in = u->prompt - u->cached - u->cache_write;
	lg_buf_printf(b, "{\"input_tokens\":%lld,\"output_tokens\":%lld,\"cache_read_input_tokens\":%lld,"
	                 "\"cache_creation_input_tokens\":%lld",
	              (long long)(in > 0 ? in : 0), (long long)u->completion, (long long)u->cached,
	              (long long)u->cache_write);
	if (cost) {
		lg_buf_addz(b, ",\"cost\":");
		lg_json_wnum(b, u->cost);
	}
	lg_buf_addc(b, '}');
}

static void lg_d_oa_usage(struct lg_buf *b, const struct lg_usage *u)
{
	lg_buf_printf(b, "{\"prompt_tokens\":%lld,\"completion_tokens\":%lld,\"total_tokens\":%lld,"
	                 "\"prompt_tokens_details\":{\"cached_tokens\":%lld,\"cache_write_tokens\":%lld},"
	                 "\"completion_tokens_details\":{\"reasoning_tokens\":%lld},\"cost\":",
	              (long long)u->prompt, (long long)u->completion, (long long)(u->prompt + u->completion),
	              (long long)u->cached, (long long)u->cache_write, (long long)u->reasoning);
	lg_json_wnum(b, u->cost);
	lg_buf_addc(b, '}');
}

static void lg_d_oa_chunk(struct lg_req *r, const char *delta, size_t dn, const char *finish)
{
	struct lg_buf b;
	lg_buf_init(&b, 0);
	lg_buf_printf(&b, "{\"id\":\"chatcmpl-%s\",\"object\":\"chat.completion.chunk\",\"created\":%lld,\"model\":",
	              r->id, (long long)(r->wall0 / 1000));
	lg_json_wz(&b, r->served->model);
	lg_buf_addz(&b, ",\"provider\":");
	lg_json_wz(&b, r->served->prov->name);
	lg_buf_printf(&b, ",\"choices\":[{\"index\":0,\"delta\":%.*s,\"finish_reason\":", (int)dn, delta);
	if (finish)
		lg_buf_printf(&b, "\"%s\"}]}", finish);
	else
		lg_buf_addz(&b, "null}]}");
	lg_resp_sse(r, NULL, b.p, b.len);
	lg_buf_free(&b);
}

static void lg_d_oa_stream(struct lg_req *r, int type, int idx, lg_str a, lg_str b, int raw)
{
	struct lg_wst *w = r->w;
	struct lg_buf d;
	int k;
	if (!w->started) {
		w->started = 1;
		lg_d_oa_chunk(r, "{\"role\":\"assistant\",\"content\":\"\"}", 33, NULL);
	}
	lg_buf_init(&d, 0);
	switch (type) {
	case LG_EV_TEXT:
	case LG_EV_REASONING:
		lg_buf_addz(&d, type == LG_EV_TEXT ? "{\"content\":\"" : "{\"reasoning_content\":\"");
		lg_buf_adds(&d, a);
		lg_buf_addz(&d, "\"}");
		lg_d_oa_chunk(r, d.p, d.len, NULL);
		break;
	case LG_EV_TOOL:
		if (w->ntools == LG_MAX_TOOLS) break;
		k = w->ntools++;
		w->tools[k].pidx = idx;
		lg_buf_printf(&d, "{\"tool_calls\":[{\"index\":%d,\"id\":\"", k);
		lg_buf_adds(&d, a);
		lg_buf_addz(&d, "\",\"type\":\"function\",\"function\":{\"name\":\"");
		lg_buf_adds(&d, b);
		lg_buf_addz(&d, "\",\"arguments\":\"\"}}]}");
		lg_d_oa_chunk(r, d.p, d.len, NULL);
		break;
	case LG_EV_ARGS:
		if ((k = lg_d_tool_of(w, idx)) < 0 || !a.n) break;
		lg_buf_printf(&d, "{\"tool_calls\":[{\"index\":%d,\"function\":{\"arguments\":", k);
		if (raw)
			lg_json_wstr(&d, a.p, a.n);
		else
			lg_w_str(&d, a);
		lg_buf_addz(&d, "}}]}");
		lg_d_oa_chunk(r, d.p, d.len, NULL);
		break;
	case LG_EV_FINISH:
		lg_d_oa_chunk(r, "{}", 2, lg_fin_openai[idx]);
		break;
	case LG_EV_END:
		if (r->want_usage) {
			lg_buf_printf(&d, "{\"id\":\"chatcmpl-%s\",\"object\":\"chat.completion.chunk\",\"created\":%lld,"
			                  "\"model\":", r->id, (long long)(r->wall0 / 1000));
			lg_json_wz(&d, r->served->model);
			lg_buf_addz(&d, ",\"provider\":");
			lg_json_wz(&d, r->served->prov->name);
			lg_buf_addz(&d, ",\"choices\":[],\"usage\":");
			lg_d_oa_usage(&d, &r->usage);
			lg_buf_addc(&d, '}');
			lg_resp_sse(r, NULL, d.p, d.len);
		}
		lg_resp_sse(r, NULL, "[DONE]", 6);
		break;
	default: break;
	}
	lg_buf_free(&d);
}

#define LG_PING_MS 10000 /* a translated Anthropic stream silent this long gets a ping, as Anthropic sends */

/* The ping timer (r->rtm: the retry timer is done with once the first
 * byte went out), armed once at message_start: when it fires, a ping if
 * the stream has been silent for LG_PING_MS, else it waits for the rest. */
static void lg_d_an_ping(struct llmgw *gw, struct lg_timer *t)
{
	struct lg_req *r = (struct lg_req *)(void *)((char *)t - offsetof(struct lg_req, rtm));
	int64_t quiet;
	if (r->finished || r->stream_done || !r->cc || !r->w) return;
	quiet = gw->now - r->w->last_event;
	if (quiet < LG_PING_MS) {
		lg_timer_set(gw, t, LG_PING_MS - quiet);
		return;
	}
	lg_resp_sse(r, "ping", "{\"type\":\"ping\"}", 15);
	r->w->last_event = gw->now;
	if (lg_conn_flush(r->cc) < 0) return; /* a timer writes on its own: nothing else flushes now */
	lg_timer_set(gw, t, LG_PING_MS);
}

/* One event to a translated Anthropic stream (no timer work per event:
 * the ping timer reads last_event). */
static void lg_d_an_event(struct lg_req *r, const char *name, struct lg_buf *d)
{
	lg_resp_sse(r, name, d->p, d->len);
	d->len = d->off = 0;
	r->w->last_event = r->gw->now;
}

static void lg_d_an_close(struct lg_req *r, struct lg_buf *d)
{
	struct lg_wst *w = r->w;
	if (w->block_type < 0) return;
	lg_buf_printf(d, "{\"type\":\"content_block_stop\",\"index\":%d}", w->block);
	lg_d_an_event(r, "content_block_stop", d);
	w->block_type = -1;
	w->block++;
}

static void lg_d_an_open(struct lg_req *r, struct lg_buf *d, int type, lg_str id, lg_str name)
{
	struct lg_wst *w = r->w;
	if (w->block_type == type && type != LG_EV_TOOL) return;
	lg_d_an_close(r, d);
	w->block_type = type;
	lg_buf_printf(d, "{\"type\":\"content_block_start\",\"index\":%d,\"content_block\":", w->block);
	if (type == LG_EV_TEXT)
		lg_buf_addz(d, "{\"type\":\"text\",\"text\":\"\"}}");
	else if (type == LG_EV_REASONING)
		lg_buf_addz(d, "{\"type\":\"thinking\",\"thinking\":\"\"}}");
	else {
		lg_buf_addz(d, "{\"type\":\"tool_use\",\"id\":\"");
		lg_buf_adds(d, id);
		lg_buf_addz(d, "\",\"name\":\"");
		lg_buf_adds(d, name);
		lg_buf_addz(d, "\",\"input\":{}}}");
	}
	lg_d_an_event(r, "content_block_start", d);
}

static void lg_d_an_stream(struct lg_req *r, int type, int idx, lg_str a, lg_str b, int raw)
{
	struct lg_wst *w = r->w;
	struct lg_buf d;
	int k;
	lg_buf_init(&d, 0);
	if (!w->started) {
		w->started = 1;
		w->block_type = -1;
		lg_buf_printf(&d, "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_%s\",\"type\":\"message\","
		                  "\"role\":\"assistant\",\"model\":", r->id);
		lg_json_wz(&d, r->served->model);
		lg_buf_addz(&d, ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":");
		if (r->usage.seen) {
			lg_d_an_usage(&d, &r->usage, 0);
		} else { /* the upstream tells at the end: the estimate, marked as one */
			struct lg_usage u0;
			memset(&u0, 0, sizeof u0);
			u0.prompt = r->prompt_est;
			lg_d_an_usage(&d, &u0, 0);
			d.len--; /* its '}' */
			lg_buf_addz(&d, ",\"llmgw_estimated\":true}");
		}
		lg_buf_addz(&d, "}}");
		lg_d_an_event(r, "message_start", &d);
		lg_buf_addz(&d, "{\"type\":\"ping\"}"); /* as Anthropic does, right after message_start */
		lg_d_an_event(r, "ping", &d);
		r->rtm.fn = lg_d_an_ping;
		lg_timer_set(r->gw, &r->rtm, LG_PING_MS);
	}
	switch (type) {
	case LG_EV_TEXT:
	case LG_EV_REASONING:
		lg_d_an_open(r, &d, type, a, b);
		lg_buf_printf(&d, "{\"type\":\"content_block_delta\",\"index\":%d,\"delta\":{\"type\":\"%s\",\"%s\":\"",
		              w->block, type == LG_EV_TEXT ? "text_delta" : "thinking_delta",
		              type == LG_EV_TEXT ? "text" : "thinking");
		lg_buf_adds(&d, a);
		lg_buf_addz(&d, "\"}}");
		lg_d_an_event(r, "content_block_delta", &d);
		break;
	case LG_EV_SIG:
		if (w->block_type != LG_EV_REASONING) break;
		lg_buf_printf(&d, "{\"type\":\"content_block_delta\",\"index\":%d,\"delta\":{\"type\":\"signature_delta\","
		                  "\"signature\":\"", w->block);
		lg_buf_adds(&d, a);
		lg_buf_addz(&d, "\"}}");
		lg_d_an_event(r, "content_block_delta", &d);
		break;
	case LG_EV_TOOL:
		if (w->ntools == LG_MAX_TOOLS) break;
		k = w->ntools++;
		w->tools[k].pidx = idx;
		lg_d_an_open(r, &d, LG_EV_TOOL, a, b);
		break;
	case LG_EV_ARGS:
		if ((k = lg_d_tool_of(w, idx)) < 0 || !a.n) break;
		if (w->block_type != LG_EV_TOOL || k != w->ntools - 1) break; /* arguments of an earlier call: Anthropic cannot interleave */
		lg_buf_printf(&d, "{\"type\":\"content_block_delta\",\"index\":%d,\"delta\":{\"type\":\"input_json_delta\","
		                  "\"partial_json\":", w->block);
		if (raw)
			lg_json_wstr(&d, a.p, a.n);
		else
			lg_w_str(&d, a);
		lg_buf_addz(&d, "}}");
		lg_d_an_event(r, "content_block_delta", &d);
		break;
	case LG_EV_FINISH: /* held until the usage is known */
		lg_d_an_close(r, &d);
		break;
	case LG_EV_END:
		lg_d_an_close(r, &d);
		lg_buf_printf(&d, "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"%s\",\"stop_sequence\":null},"
		                  "\"usage\":", lg_fin_anthropic[w->has_finish ? w->finish : 0]);
		lg_d_an_usage(&d, &r->usage, 1);
		lg_buf_addc(&d, '}');
		lg_d_an_event(r, "message_delta", &d);
		lg_buf_addz(&d, "{\"type\":\"message_stop\"}");
		lg_d_an_event(r, "message_stop", &d);
		break;
	default: break;
	}
	lg_buf_free(&d);
}

static void lg_d_collect(struct lg_req *r, int type, int idx, lg_str a, lg_str b, int raw)
{
	struct lg_wst *w = r->w;
	int k;
	switch (type) {
	case LG_EV_TEXT: lg_buf_adds(&w->text, a); break;
	case LG_EV_REASONING: lg_buf_adds(&w->reasoning, a); break;
	case LG_EV_SIG: lg_buf_adds(&w->sig, a); break;
	case LG_EV_TOOL:
		if (w->ntools == LG_MAX_TOOLS) break;
		k = w->ntools++;
		w->tools[k].pidx = idx;
		w->tools[k].id = lg_str_of(lg_arena_strn(&r->a, a.p, a.n), a.n);
		w->tools[k].name = lg_str_of(lg_arena_strn(&r->a, b.p, b.n), b.n);
		lg_buf_init(&w->tools[k].args, LLMGW_MAX_RESPONSE);
		break;
	case LG_EV_ARGS:
		if ((k = lg_d_tool_of(w, idx)) < 0) break;
		if (raw) {
			struct lg_buf e;
			lg_buf_init(&e, 0);
			lg_json_wstr(&e, a.p, a.n);
			if (e.len >= 2) lg_buf_add(&w->tools[k].args, e.p + 1, e.len - 2);
			lg_buf_free(&e);
		} else {
			lg_buf_adds(&w->tools[k].args, a);
		}
		break;
	default: break;
	}
}

/* The collected answer in the OpenAI dialect. */
static void lg_d_oa_final(struct lg_req *r, struct lg_buf *o)
{
	struct lg_wst *w = r->w;
	int i;
	lg_buf_printf(o, "{\"id\":\"chatcmpl-%s\",\"object\":\"chat.completion\",\"created\":%lld,\"model\":", r->id,
	              (long long)(r->wall0 / 1000));
	lg_json_wz(o, r->served->model);
	lg_buf_addz(o, ",\"provider\":");
	lg_json_wz(o, r->served->prov->name);
	lg_buf_addz(o, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
	if (w->text.len || !w->ntools) {
		lg_buf_addc(o, '"');
		lg_buf_add(o, w->text.p, w->text.len);
		lg_buf_addc(o, '"');
	} else {
		lg_buf_addz(o, "null");
	}
	if (w->reasoning.len) {
		lg_buf_addz(o, ",\"reasoning_content\":\"");
		lg_buf_add(o, w->reasoning.p, w->reasoning.len);
		lg_buf_addc(o, '"');
	}
	if (w->ntools) {
		lg_buf_addz(o, ",\"tool_calls\":[");
		for (i = 0; i < w->ntools; i++) {
			lg_buf_addz(o, i ? ",{\"id\":" : "{\"id\":");
			lg_w_str(o, w->tools[i].id);
			lg_buf_addz(o, ",\"type\":\"function\",\"function\":{\"name\":");
			lg_w_str(o, w->tools[i].name);
			lg_buf_addz(o, ",\"arguments\":\"");
			if (w->tools[i].args.len)
				lg_buf_add(o, w->tools[i].args.p, w->tools[i].args.len);
			else
				lg_buf_addz(o, "{}");
			lg_buf_addz(o, "\"}}");
		}
		lg_buf_addc(o, ']');
	}
	lg_buf_printf(o, "},\"finish_reason\":\"%s\"}],\"usage\":", lg_fin_openai[w->has_finish ? w->finish : 0]);
	lg_d_oa_usage(o, &r->usage);
	lg_buf_addc(o, '}');
}

/* The collected answer in the Anthropic dialect. */
static void lg_d_an_final(struct lg_req *r, struct lg_buf *o)
{
	struct lg_wst *w = r->w;
	int i, c = 0;
	lg_buf_printf(o, "{\"id\":\"msg_%s\",\"type\":\"message\",\"role\":\"assistant\",\"model\":", r->id);
	lg_json_wz(o, r->served->model);
	lg_buf_addz(o, ",\"provider\":");
	lg_json_wz(o, r->served->prov->name);
	lg_buf_addz(o, ",\"content\":[");
	if (w->reasoning.len) {
		lg_buf_addz(o, "{\"type\":\"thinking\",\"thinking\":\"");
		lg_buf_add(o, w->reasoning.p, w->reasoning.len);
		lg_buf_addz(o, "\",\"signature\":\"");
		lg_buf_add(o, w->sig.p, w->sig.len);
		lg_buf_addz(o, "\"}");
		c++;
	}
	if (w->text.len) {
		lg_buf_addz(o, c++ ? ",{\"type\":\"text\",\"text\":\"" : "{\"type\":\"text\",\"text\":\"");
		lg_buf_add(o, w->text.p, w->text.len);
		lg_buf_addz(o, "\"}");
	}
	for (i = 0; i < w->ntools; i++) {
		lg_str args = lg_canon_unesc(r, lg_str_of(w->tools[i].args.p ? w->tools[i].args.p : "",
		                                          w->tools[i].args.len));
		struct lg_json aj;
		memset(&aj, 0, sizeof aj);
		if (!args.n || lg_json_parse(&aj, args.p, args.n) <= 0) args = lg_str_of("{}", 2);
		lg_buf_addz(o, c++ ? ",{\"type\":\"tool_use\",\"id\":" : "{\"type\":\"tool_use\",\"id\":");
		lg_w_str(o, w->tools[i].id);
		lg_buf_addz(o, ",\"name\":");
		lg_w_str(o, w->tools[i].name);
		lg_buf_addz(o, ",\"input\":");
		lg_buf_adds(o, args);
		lg_buf_addc(o, '}');
	}
	lg_buf_printf(o, "],\"stop_reason\":\"%s\",\"stop_sequence\":null,\"usage\":",
	              lg_fin_anthropic[w->has_finish ? w->finish : 0]);
	lg_d_an_usage(o, &r->usage, 1);
	lg_buf_addc(o, '}');
}

static void lg_d_an_native_event(struct lg_req *r, lg_str evname, lg_str data)
{
	struct lg_json j;
	const char *s = data.p;
	struct lg_buf o;
	lg_str ty;
	char name[64];
	struct lg_buf clean;
	if (r->stream_done) return; /* nothing after message_stop (or after an error ended it) */
	if (lg_str_eq(evname, "error") && lg_scrub(r->cfg, data.p, data.n, &clean)) {
		/* passed on natively, never with the credential it may quote */
		lg_d_an_native_event(r, evname, lg_str_of(clean.p, clean.len));
		lg_buf_free(&clean);
		return;
	}
	memset(&j, 0, sizeof j);
	if (lg_req_json(r, &j, data.p, data.n) <= 0 || j.t[0].type != LG_J_OBJ) {
		lg_native_send(r, evname.n ? "message" : NULL, data.p, data.n, 0, 0);
		return;
	}
	ty = lg_jesc(&j, s, lg_json_get(&j, s, 0, "type"));
	if (!ty.n) ty = evname;
	snprintf(name, sizeof name, "%.*s", (int)LG_MIN(ty.n, 60), ty.p);
	if (lg_str_eq(ty, "message_start"))
		lg_p_anth_usage(r, &j, s, lg_json_get(&j, s, lg_json_get(&j, s, 0, "message"), "usage"), 0);
	if (lg_str_eq(ty, "message_delta")) {
		lg_p_anth_usage(r, &j, s, lg_json_get(&j, s, 0, "usage"), 1);
		lg_str sr = lg_jesc(&j, s, lg_json_get(&j, s, lg_json_get(&j, s, 0, "delta"), "stop_reason"));
		if (sr.n) lg_ev_acct(r, LG_EV_FINISH, lg_fin_code(sr), LG_NOSTR);
	}
	if (lg_str_eq(ty, "message_stop")) lg_ev_acct(r, LG_EV_END, 0, LG_NOSTR);
	if (lg_str_eq(ty, "error")) { /* its type says whether another target may do better */
		static const struct { const char *type; int status; } st[] = {
		    {"rate_limit_error", 429}, {"overloaded_error", 529}, {"invalid_request_error", 400},
		    {"authentication_error", 401}, {"permission_error", 403}, {"not_found_error", 404},
		    {"request_too_large", 413}, {"api_error", 500}};
		int e = lg_json_get(&j, s, 0, "error"), code = 502;
		lg_str et = lg_jesc(&j, s, lg_json_get(&j, s, e, "type")), em = lg_jesc(&j, s, lg_json_get(&j, s, e, "message"));
		size_t x;
		for (x = 0; x < LG_COUNTOF(st); x++)
			if (lg_str_eq(et, st[x].type)) code = st[x].status;
		lg_ev_acct(r, LG_EV_ERROR, code, em.n ? em : lg_strz("error event in the stream"));
	}
	if (lg_str_eq(ty, "ping")) return;
	if (lg_str_eq(ty, "content_block_delta")) /* its text, about 4 bytes a token, past the envelope */
		lg_ev_acct(r, LG_EV_TEXT, data.n > 74 ? (int)(((int64_t)data.n - 74 + 3) / 4) : 1, LG_NOSTR);
	lg_buf_init(&o, 0);
	if (lg_str_eq(ty, "message_start") || lg_str_eq(ty, "message_delta"))
		lg_native_obj(r, &j, s, 0, &o, 0, NULL);
	else
		lg_buf_adds(&o, data);
	lg_native_send(r, name, o.p, o.len, lg_str_eq(ty, "message_start"), lg_str_eq(ty, "error"));
	lg_buf_free(&o);
}

static int lg_d_an_native_full(struct lg_req *r, const char *s, size_t n, struct lg_buf *o)
{
	struct lg_json j;
	memset(&j, 0, sizeof j);
	if (lg_req_json(r, &j, s, n) <= 0 || j.t[0].type != LG_J_OBJ) return -1;
	lg_p_anth_usage(r, &j, s, lg_json_get(&j, s, 0, "usage"), 0);
	lg_native_obj(r, &j, s, 0, o, 1, NULL);
	return o->err ? -1 : 1;
}

static int lg_d_oa_native_full(struct lg_req *r, const char *s, size_t n, struct lg_buf *o)
{
	return lg_prov_openai_rewrite(r, s, n, o, 0);
}

static void lg_d_oa_native_end(struct lg_req *r) { lg_resp_event(r, "[DONE]", 6); }

static void lg_d_an_native_end(struct lg_req *r)
{
	static const char ev[] = "{\"type\":\"message_stop\"}";
	lg_resp_sse(r, "message_stop", ev, sizeof ev - 1);
}

/* USD per token as a plain decimal string, OpenRouter-style: "0.000003". */
static void lg_d_price(struct lg_buf *b, const char *name, double usd_per_m, int comma)
{
	char num[64];
	size_t n = (size_t)snprintf(num, sizeof num, "%.15f", usd_per_m / 1e6);
	while (n > 1 && num[n - 1] == '0') num[--n] = 0;
	if (n && num[n - 1] == '.') num[--n] = 0;
	lg_buf_printf(b, "%s\"%s\":\"%s\"", comma ? "," : "", name, num);
}

/* The models a key may use in the OpenAI shape, {"object":"list","data":[{"id",
 * "object":"model",...}]}, with llmgw's context_length, pricing (OpenRouter's
 * names), providers and aliases. */
static LG_COLD void lg_d_oa_models(struct lg_req *r, struct lg_buf *o, const struct lg_model *only)
{
	const struct lg_cfg *c = r->cfg;
	struct lg_buf *b = o;
	int i, k, n = 0;
	if (!only) lg_buf_addz(b, "{\"object\":\"list\",\"data\":[");
	for (i = 0; i < c->nmodels; i++) {
		const struct lg_model *m = c->models[i];
		const struct lg_target *t0 = &m->t[0];
		int64_t ctx = 0;
		if ((only && m != only) || !lg_route_key_allows(r->key, m->name)) continue;
		for (k = 0; k < m->nt; k++) ctx = LG_MAX(ctx, m->t[k].context);
		lg_buf_addz(b, n++ ? ",{\"id\":" : "{\"id\":");
		lg_json_wz(b, m->name);
		lg_buf_printf(b, ",\"object\":\"model\",\"created\":0,\"owned_by\":\"llmgw\",\"context_length\":%lld,"
		                  "\"pricing\":{", (long long)ctx);
		lg_d_price(b, "prompt", t0->in, 0);
		lg_d_price(b, "completion", t0->out, 1);
		lg_d_price(b, "input_cache_read", t0->cache_read, 1);
		lg_d_price(b, "input_cache_write", t0->cache_write, 1);
		lg_buf_addz(b, "},\"providers\":[");
		for (k = 0; k < m->nt; k++) {
			int d, dup = 0;
			for (d = 0; d < k; d++) dup |= m->t[d].prov == m->t[k].prov;
			if (dup) continue;
			if (k) lg_buf_addc(b, ',');
			lg_json_wz(b, m->t[k].prov->name);
		}
		lg_buf_addz(b, "],\"aliases\":[");
		for (k = 0; k < m->naliases; k++) {
			if (k) lg_buf_addc(b, ',');
			lg_json_wz(b, m->aliases[k]);
		}
		lg_buf_addz(b, "]}");
	}
	/* Codex (GET /models?client_version=) reads "models": a catalog of its own
	 * ModelInfo, whose instructions_template would replace its own prompt;
	 * an empty one keeps its built-in metadata, without a decoding error */
	if (!only && r->query && strstr(r->query, "client_version=")) lg_buf_addz(b, "],\"models\":[]}\n");
	else lg_buf_addz(b, only ? "\n" : "]}\n");
}

/* A query parameter's value ("?a=1&b=2"), percent-decoded into out; 0 when absent. */
static LG_COLD int lg_d_qparam(const char *q, const char *name, char *out, size_t cap)
{
	size_t nl = strlen(name), o = 0;
	const char *p = q;
	while (p && *p) {
		if (*p == '?' || *p == '&') p++;
		if (!strncmp(p, name, nl) && p[nl] == '=') {
			for (p += nl + 1; *p && *p != '&' && o + 1 < cap; p++) {
				int h = lg_hexval(p[1]), l = h >= 0 ? lg_hexval(p[2]) : -1;
				if (*p == '%' && h >= 0 && l >= 0) {
					out[o++] = (char)(h * 16 + l);
					p += 2;
				} else {
					out[o++] = *p == '+' ? ' ' : *p;
				}
			}
			out[o] = 0;
			return 1;
		}
		p = strchr(p, '&');
	}
	return 0;
}

/* In the Anthropic shape: {"data":[{"type":"model","id","display_name",
 * "created_at"}],"has_more","first_id","last_id"}, paged like Anthropic's:
 * limit (default 20, 1 to 1000), after_id (the page after that model),
 * before_id (the page just before it). */
static LG_COLD void lg_d_an_models(struct lg_req *r, struct lg_buf *b, const struct lg_model *only)
{
	const struct lg_cfg *c = r->cfg;
	const char *first = NULL, *last = NULL, *lq = r->query ? strstr(r->query, "limit=") : NULL;
	long limit = lq ? strtol(lq + 6, NULL, 10) : 20; /* Anthropic's default; 1 to 1000 */
	int i, n = 0, more = 0, from = 0, to = c->nmodels, before;
	char after[300], bef[300];
	if (limit < 1 || limit > 1000) limit = limit < 1 ? 20 : 1000;
	if (!only && r->query && lg_d_qparam(r->query, "after_id", after, sizeof after))
		for (i = 0; i < c->nmodels; i++)
			if (!strcmp(c->models[i]->name, after)) from = i + 1;
	before = !only && r->query && lg_d_qparam(r->query, "before_id", bef, sizeof bef);
	if (before) { /* the last limit models the key may use before it */
		int k = 0;
		for (to = 0; to < c->nmodels && strcmp(c->models[to]->name, bef); to++) {
		}
		for (from = to; from > 0 && k < limit; from--)
			if (lg_route_key_allows(r->key, c->models[from - 1]->name)) k++;
		for (i = 0; i < from && !more; i++) more = lg_route_key_allows(r->key, c->models[i]->name);
	}
	if (!only) lg_buf_addz(b, "{\"data\":[");
	for (i = only ? 0 : from; i < (only ? c->nmodels : to); i++) {
		const struct lg_model *m = c->models[i];
		if ((only && m != only) || !lg_route_key_allows(r->key, m->name)) continue;
		if (n == limit) {
			more = 1;
			break;
		}
		lg_buf_addz(b, n++ ? ",{\"type\":\"model\",\"id\":" : "{\"type\":\"model\",\"id\":");
		lg_json_wz(b, m->name);
		lg_buf_addz(b, ",\"display_name\":");
		lg_json_wz(b, m->name);
		lg_buf_addz(b, ",\"created_at\":\"1970-01-01T00:00:00Z\"}");
		if (!first) first = m->name;
		last = m->name;
	}
	if (only) {
		lg_buf_addc(b, '\n');
		return;
	}
	lg_buf_addz(b, more ? "],\"has_more\":true,\"first_id\":" : "],\"has_more\":false,\"first_id\":");
	if (first) lg_json_wz(b, first); else lg_buf_addz(b, "null");
	lg_buf_addz(b, ",\"last_id\":");
	if (last) lg_json_wz(b, last); else lg_buf_addz(b, "null");
	lg_buf_addz(b, "}\n");
}

/* --- the Responses dialect (/v1/responses): a response object, or its
 * stream of typed events, from the canonical events ---------------------- */

/* Did the client ask for reasoning.encrypted_content (in include)? A
 * reasoning item then carries the provider's signature as it. */
static int lg_d_rs_enc(const struct lg_req *r)
{
	const struct lg_json *j = &r->j;
	int inc = lg_json_get(j, r->body, 0, "include");
	uint32_t i;
	for (i = 0; lg_json_type(j, inc) == LG_J_ARR && i < j->t[inc].size; i++)
		if (lg_str_eq(lg_jesc(j, r->body, lg_json_at(j, inc, i)), "reasoning.encrypted_content")) return 1;
	return 0;
}

/* An output item's id, quoted: msg_, rs_ or fc_, the request id, its output index. */
static void lg_d_rs_id(struct lg_req *r, struct lg_buf *o, int kind, int n)
{
	lg_buf_addz(o, kind == LG_EV_TEXT ? "\"msg_" : kind == LG_EV_REASONING ? "\"rs_" : "\"fc_");
	lg_buf_addz(o, r->id);
	lg_buf_addc(o, '_');
	lg_buf_addu(o, (uint64_t)n, 0);
	lg_buf_addc(o, '"');
}

/* A function call's arguments (esc) as written: "{}" when none came. */
static lg_str lg_d_rs_args(const struct lg_wst *w, int k)
{
	const struct lg_buf *a = &w->tools[k].args;
	return a->len ? lg_str_of(a->p, a->len) : lg_str_of("{}", 2);
}

/* The request's tool of that name (esc, as the upstream called it), for
 * what the translation changed: custom tools, namespaced names. */
static const struct lg_ctool *lg_d_rs_tool(const struct lg_req *r, lg_str name)
{
	const struct lg_creq *q = r->creq;
	int i;
	for (i = 0; q && i < q->ntools; i++)
		if (q->tools[i].name.n == name.n && !memcmp(q->tools[i].name.p, name.p, name.n)) return &q->tools[i];
	return NULL;
}

/* A custom tool's input as a JSON string: the "input" of the arguments
 * the upstream wrote (esc), or those arguments as text when they are not
 * that object. */
static void lg_d_rs_input(struct lg_buf *o, lg_str args)
{
	struct lg_json aj;
	char *raw = (char *)malloc(args.n + 1);
	long n = raw ? lg_json_unescape(args.p, args.n, raw) : -1;
	int v = -1, k;
	memset(&aj, 0, sizeof aj);
	if (n >= 0 && (k = lg_json_parse(&aj, raw, (size_t)n)) > 0) { /* counted, then tokenized */
		memset(&aj, 0, sizeof aj);
		aj.cap = (uint32_t)k;
		if ((aj.t = (struct lg_jtok *)malloc((size_t)k * sizeof *aj.t)) && lg_json_parse(&aj, raw, (size_t)n) > 0 &&
		    aj.t[0].type == LG_J_OBJ)
			v = lg_json_get(&aj, raw, 0, "input");
	}
	if (lg_json_type(&aj, v) == LG_J_STR)
		lg_w_str(o, lg_json_raw(&aj, raw, v));
	else
		lg_w_str(o, args);
	free(aj.t);
	free(raw);
}

/* Output item n as JSON: complete (done), or as it opens (in_progress,
 * no content yet). */
static void lg_d_rs_item(struct lg_req *r, struct lg_buf *o, const struct lg_rs_item *it, int n, int done)
{
	struct lg_wst *w = r->w;
	lg_buf_addz(o, "{\"id\":");
	lg_d_rs_id(r, o, it->kind, n);
	if (it->kind == LG_EV_TEXT) {
		lg_buf_addz(o, done ? ",\"type\":\"message\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":["
		                      "{\"type\":\"output_text\",\"text\":\""
		                    : ",\"type\":\"message\",\"status\":\"in_progress\",\"role\":\"assistant\",\"content\":[");
		if (done) {
			if (it->len) lg_buf_add(o, w->text.p + it->off, it->len);
			lg_buf_addz(o, "\",\"annotations\":[]}");
		}
		lg_buf_addz(o, "]}");
	} else if (it->kind == LG_EV_REASONING) {
		lg_buf_addz(o, done ? ",\"type\":\"reasoning\",\"summary\":[{\"type\":\"summary_text\",\"text\":\""
		                    : ",\"type\":\"reasoning\",\"summary\":[");
		if (done) {
			if (it->len) lg_buf_add(o, w->reasoning.p + it->off, it->len);
			lg_buf_addz(o, "\"}");
		}
		lg_buf_addc(o, ']');
		if (done && it->slen && lg_d_rs_enc(r)) {
			lg_buf_addz(o, ",\"encrypted_content\":\"");
			lg_buf_add(o, w->sig.p + it->soff, it->slen);
			lg_buf_addc(o, '"');
		}
		lg_buf_addc(o, '}');
	} else {
		const struct lg_acc_tool *t = &w->tools[it->tool];
		const struct lg_ctool *ct = lg_d_rs_tool(r, t->name);
		if (ct && ct->custom) {
			lg_buf_addz(o, done ? ",\"type\":\"custom_tool_call\",\"status\":\"completed\",\"input\":"
			                    : ",\"type\":\"custom_tool_call\",\"status\":\"in_progress\",\"input\":\"\"");
			if (done) lg_d_rs_input(o, lg_d_rs_args(w, it->tool));
		} else {
			lg_buf_addz(o, done ? ",\"type\":\"function_call\",\"status\":\"completed\",\"arguments\":"
			                    : ",\"type\":\"function_call\",\"status\":\"in_progress\",\"arguments\":");
			lg_w_str(o, done ? lg_d_rs_args(w, it->tool) : LG_NOSTR);
		}
		lg_buf_addz(o, ",\"call_id\":");
		lg_w_str(o, t->id);
		lg_buf_addz(o, ",\"name\":");
		lg_w_str(o, ct ? ct->bare : t->name);
		if (ct && ct->ns.n) {
			lg_buf_addz(o, ",\"namespace\":");
			lg_w_str(o, ct->ns);
		}
		lg_buf_addc(o, '}');
	}
}

/* Compaction: the one compaction item, the target's summary inside. */
static void lg_d_rs_compaction(struct lg_req *r, struct lg_buf *o)
{
	lg_buf_addz(o, "{\"type\":\"compaction\",\"id\":\"cmp_");
	lg_buf_addz(o, r->id);
	lg_buf_addz(o, "\",\"encrypted_content\":\"" LG_RS_SUMMARY);
	lg_buf_add(o, r->w->text.p ? r->w->text.p : "", r->w->text.len);
	lg_buf_addz(o, "\"}");
}

/* The output array: the stream's items in their order, or the collected
 * answer as reasoning, message, function calls (compaction: its item). */
static void lg_d_rs_output(struct lg_req *r, struct lg_buf *o)
{
	struct lg_wst *w = r->w;
	struct lg_rs_item it;
	int i, n = 0;
	lg_buf_addc(o, '[');
	if (r->compact) {
		lg_d_rs_compaction(r, o);
		lg_buf_addc(o, ']');
		return;
	}
	if (r->stream) {
		for (i = 0; i < w->nitems; i++) {
			if (i) lg_buf_addc(o, ',');
			lg_d_rs_item(r, o, &w->items[i], i, !w->items[i].open);
		}
		lg_buf_addc(o, ']');
		return;
	}
	memset(&it, 0, sizeof it);
	if (w->reasoning.len) {
		it.kind = LG_EV_REASONING;
		it.len = (uint32_t)w->reasoning.len;
		it.slen = (uint32_t)w->sig.len;
		lg_d_rs_item(r, o, &it, n++, 1);
	}
	if (w->text.len || !w->ntools) {
		it.kind = LG_EV_TEXT;
		it.len = (uint32_t)w->text.len;
		if (n) lg_buf_addc(o, ',');
		lg_d_rs_item(r, o, &it, n++, 1);
	}
	for (i = 0; i < w->ntools; i++) {
		it.kind = LG_EV_TOOL;
		it.tool = i;
		if (n) lg_buf_addc(o, ',');
		lg_d_rs_item(r, o, &it, n++, 1);
	}
	lg_buf_addc(o, ']');
}

/* Usage in the Responses shape: input_tokens include the cached ones. */
static void lg_d_rs_usage(struct lg_buf *b, const struct lg_usage *u)
{
	lg_buf_printf(b, "{\"input_tokens\":%lld,\"input_tokens_details\":{\"cached_tokens\":%lld,\"cache_write_tokens\":"
	                 "%lld},\"output_tokens\":%lld,\"output_tokens_details\":{\"reasoning_tokens\":%lld},"
	                 "\"total_tokens\":%lld,\"cost\":",
	              (long long)u->prompt, (long long)u->cached, (long long)u->cache_write, (long long)u->completion,
	              (long long)u->reasoning, (long long)(u->prompt + u->completion));
	lg_json_wnum(b, u->cost);
	lg_buf_addc(b, '}');
}

/* How the answer ended: "completed", or "incomplete" when it was cut
 * (max_output_tokens, content_filter). */
static const char *lg_d_rs_status(const struct lg_wst *w)
{
	return w->has_finish && (w->finish == LG_FIN_LENGTH || w->finish == LG_FIN_FILTER) ? "incomplete" : "completed";
}

/* The response object; full: with its output and usage (else output []
 * and usage null: it is in progress); err: why it failed. */
static void lg_d_rs_obj(struct lg_req *r, struct lg_buf *o, const char *status, int full, const char *err)
{
	const char *ob = r->ep == LG_EP_COMPACT ? "response.compaction" : "response";
	if (!r->w && r->rs_id) /* native: the upstream's response, as the client knows it */
		lg_buf_printf(o, "{\"id\":\"%s\",\"object\":\"%s\",\"created_at\":%lld,\"status\":\"%s\",\"model\":",
		              r->rs_id, ob, (long long)(r->wall0 / 1000), status);
	else
		lg_buf_printf(o, "{\"id\":\"resp_%s\",\"object\":\"%s\",\"created_at\":%lld,\"status\":\"%s\",\"model\":",
		              r->id, ob, (long long)(r->wall0 / 1000), status);
	lg_json_wz(o, r->served ? r->served->model : r->model_req);
	lg_buf_addz(o, ",\"provider\":");
	lg_json_wz(o, r->served ? r->served->prov->name : "");
	lg_buf_addz(o, ",\"output\":");
	if (full)
		lg_d_rs_output(r, o);
	else
		lg_buf_addz(o, "[]");
	lg_buf_addz(o, ",\"usage\":");
	if (full)
		lg_d_rs_usage(o, &r->usage);
	else
		lg_buf_addz(o, "null");
	if (strcmp(status, "incomplete") == 0)
		lg_buf_printf(o, ",\"incomplete_details\":{\"reason\":\"%s\"}",
		              r->w->finish == LG_FIN_FILTER ? "content_filter" : "max_output_tokens");
	else
		lg_buf_addz(o, ",\"incomplete_details\":null");
	if (err) {
		lg_buf_printf(o, ",\"error\":{\"code\":\"%s\",\"message\":",
		              r->err_status == 429 ? "rate_limit_exceeded" : "server_error");
		lg_json_wz(o, err);
		lg_buf_addz(o, "}}");
	} else {
		lg_buf_addz(o, ",\"error\":null}");
	}
}

/* Starts an event in d: {"type":...,"sequence_number":n (the rest and
 * its '}' are the caller's); lg_d_rs_send sends it, named by its type. */
static void lg_d_rs_begin(struct lg_req *r, struct lg_buf *d, const char *type)
{
	lg_buf_addz(d, "{\"type\":\"");
	lg_buf_addz(d, type);
	lg_buf_addz(d, "\",\"sequence_number\":");
	lg_buf_addu(d, (uint64_t)(r->w ? r->w->seq++ : r->rs_seq++), 0);
}

static void lg_d_rs_send(struct lg_req *r, struct lg_buf *d, const char *type)
{
	lg_resp_sse(r, type, d->p, d->len);
	d->len = d->off = 0;
}

/* ,"item_id":"..","output_index":n of item n */
static void lg_d_rs_where(struct lg_req *r, struct lg_buf *d, int kind, int n)
{
	lg_buf_addz(d, ",\"item_id\":");
	lg_d_rs_id(r, d, kind, n);
	lg_buf_addz(d, ",\"output_index\":");
	lg_buf_addu(d, (uint64_t)n, 0);
}

/* Ends the open output item: its text's done events, then output_item.done. */
static void lg_d_rs_close(struct lg_req *r, struct lg_buf *d)
{
	struct lg_wst *w = r->w;
	const struct lg_ctool *ct;
	struct lg_rs_item *it = w->nitems ? &w->items[w->nitems - 1] : NULL;
	int n = w->nitems - 1;
	if (!it || !it->open) return;
	it->open = 0;
	if (it->kind == LG_EV_TEXT) {
		lg_d_rs_begin(r, d, "response.output_text.done");
		lg_d_rs_where(r, d, it->kind, n);
		lg_buf_addz(d, ",\"content_index\":0,\"text\":\"");
		if (it->len) lg_buf_add(d, w->text.p + it->off, it->len);
		lg_buf_addz(d, "\",\"logprobs\":[]}");
		lg_d_rs_send(r, d, "response.output_text.done");
		lg_d_rs_begin(r, d, "response.content_part.done");
		lg_d_rs_where(r, d, it->kind, n);
		lg_buf_addz(d, ",\"content_index\":0,\"part\":{\"type\":\"output_text\",\"text\":\"");
		if (it->len) lg_buf_add(d, w->text.p + it->off, it->len);
		lg_buf_addz(d, "\",\"annotations\":[]}}");
		lg_d_rs_send(r, d, "response.content_part.done");
	} else if (it->kind == LG_EV_REASONING) {
		lg_d_rs_begin(r, d, "response.reasoning_summary_text.done");
		lg_d_rs_where(r, d, it->kind, n);
		lg_buf_addz(d, ",\"summary_index\":0,\"text\":\"");
		if (it->len) lg_buf_add(d, w->reasoning.p + it->off, it->len);
		lg_buf_addz(d, "\"}");
		lg_d_rs_send(r, d, "response.reasoning_summary_text.done");
		lg_d_rs_begin(r, d, "response.reasoning_summary_part.done");
		lg_d_rs_where(r, d, it->kind, n);
		lg_buf_addz(d, ",\"summary_index\":0,\"part\":{\"type\":\"summary_text\",\"text\":\"");
		if (it->len) lg_buf_add(d, w->reasoning.p + it->off, it->len);
		lg_buf_addz(d, "\"}}");
		lg_d_rs_send(r, d, "response.reasoning_summary_part.done");
	} else if ((ct = lg_d_rs_tool(r, w->tools[it->tool].name)) && ct->custom) { /* its input, whole */
		lg_d_rs_begin(r, d, "response.custom_tool_call_input.done");
		lg_d_rs_where(r, d, it->kind, n);
		lg_buf_addz(d, ",\"input\":");
		lg_d_rs_input(d, lg_d_rs_args(w, it->tool));
		lg_buf_addc(d, '}');
		lg_d_rs_send(r, d, "response.custom_tool_call_input.done");
	} else {
		lg_d_rs_begin(r, d, "response.function_call_arguments.done");
		lg_d_rs_where(r, d, it->kind, n);
		lg_buf_addz(d, ",\"arguments\":");
		lg_w_str(d, lg_d_rs_args(w, it->tool));
		lg_buf_addc(d, '}');
		lg_d_rs_send(r, d, "response.function_call_arguments.done");
	}
	lg_d_rs_begin(r, d, "response.output_item.done");
	lg_buf_addz(d, ",\"output_index\":");
	lg_buf_addu(d, (uint64_t)n, 0);
	lg_buf_addz(d, ",\"item\":");
	lg_d_rs_item(r, d, it, n, 1);
	lg_buf_addc(d, '}');
	lg_d_rs_send(r, d, "response.output_item.done");
}

/* Closes the open item and opens the next: output_item.added, and for a
 * message or reasoning its empty part. NULL when no room is left. */
static struct lg_rs_item *lg_d_rs_open(struct lg_req *r, struct lg_buf *d, int kind, int tool)
{
	struct lg_wst *w = r->w;
	struct lg_rs_item *it;
	int n;
	lg_d_rs_close(r, d);
	if (w->nitems == w->items_cap) { /* a few items an answer: grown by doubling */
		int cap = w->items_cap ? LG_MIN(w->items_cap * 2, LG_RS_ITEMS) : 4;
		struct lg_rs_item *ni;
		if (cap == w->items_cap || !(ni = (struct lg_rs_item *)realloc(w->items, (size_t)cap * sizeof *ni)))
			return NULL;
		w->items = ni;
		w->items_cap = cap;
	}
	n = w->nitems++;
	it = &w->items[n];
	memset(it, 0, sizeof *it);
	it->kind = kind;
	it->tool = tool;
	it->open = 1;
	it->off = (uint32_t)(kind == LG_EV_TEXT ? w->text.len : w->reasoning.len);
	lg_d_rs_begin(r, d, "response.output_item.added");
	lg_buf_addz(d, ",\"output_index\":");
	lg_buf_addu(d, (uint64_t)n, 0);
	lg_buf_addz(d, ",\"item\":");
	lg_d_rs_item(r, d, it, n, 0);
	lg_buf_addc(d, '}');
	lg_d_rs_send(r, d, "response.output_item.added");
	if (kind == LG_EV_TEXT) {
		lg_d_rs_begin(r, d, "response.content_part.added");
		lg_d_rs_where(r, d, kind, n);
		lg_buf_addz(d, ",\"content_index\":0,\"part\":{\"type\":\"output_text\",\"text\":\"\",\"annotations\":[]}}");
		lg_d_rs_send(r, d, "response.content_part.added");
	} else if (kind == LG_EV_REASONING) {
		lg_d_rs_begin(r, d, "response.reasoning_summary_part.added");
		lg_d_rs_where(r, d, kind, n);
		lg_buf_addz(d, ",\"summary_index\":0,\"part\":{\"type\":\"summary_text\",\"text\":\"\"}}");
		lg_d_rs_send(r, d, "response.reasoning_summary_part.added");
	}
	return it;
}

/* One canonical event to a Responses stream. The text and arguments are
 * kept (lg_d_collect) as well: the done events and response.completed
 * repeat them whole. */
static void lg_d_rs_stream(struct lg_req *r, int type, int idx, lg_str a, lg_str b, int raw)
{
	struct lg_wst *w = r->w;
	struct lg_rs_item *it = w->nitems && w->items[w->nitems - 1].open ? &w->items[w->nitems - 1] : NULL;
	struct lg_buf d;
	const char *st;
	size_t at;
	int k;
	lg_buf_init(&d, 0);
	if (!w->started) {
		w->started = 1;
		lg_d_rs_begin(r, &d, "response.created");
		lg_buf_addz(&d, ",\"response\":");
		lg_d_rs_obj(r, &d, "in_progress", 0, NULL);
		lg_buf_addc(&d, '}');
		lg_d_rs_send(r, &d, "response.created");
		lg_d_rs_begin(r, &d, "response.in_progress");
		lg_buf_addz(&d, ",\"response\":");
		lg_d_rs_obj(r, &d, "in_progress", 0, NULL);
		lg_buf_addc(&d, '}');
		lg_d_rs_send(r, &d, "response.in_progress");
	}
	if (r->compact && type != LG_EV_END) { /* the summary's text is kept for the one item at the end */
		if (type == LG_EV_TEXT) lg_d_collect(r, type, idx, a, b, raw);
		lg_buf_free(&d);
		return;
	}
	switch (type) {
	case LG_EV_TEXT:
	case LG_EV_REASONING:
		if (!a.n) break;
		if ((!it || it->kind != type) && !(it = lg_d_rs_open(r, &d, type, -1))) break;
		at = type == LG_EV_TEXT ? w->text.len : w->reasoning.len;
		lg_d_collect(r, type, idx, a, b, raw);
		it->len += (uint32_t)((type == LG_EV_TEXT ? w->text.len : w->reasoning.len) - at); /* what it holds */
		st = type == LG_EV_TEXT ? "response.output_text.delta" : "response.reasoning_summary_text.delta";
		lg_d_rs_begin(r, &d, st);
		lg_d_rs_where(r, &d, type, w->nitems - 1);
		lg_buf_addz(&d, type == LG_EV_TEXT ? ",\"content_index\":0,\"delta\":\"" : ",\"summary_index\":0,\"delta\":\"");
		lg_buf_adds(&d, a);
		lg_buf_addz(&d, type == LG_EV_TEXT ? "\",\"logprobs\":[]}" : "\"}");
		lg_d_rs_send(r, &d, st);
		break;
	case LG_EV_SIG:
		if (!it || it->kind != LG_EV_REASONING) break;
		if (!it->slen) it->soff = (uint32_t)w->sig.len;
		lg_d_collect(r, type, idx, a, b, raw);
		it->slen = (uint32_t)(w->sig.len - it->soff);
		break;
	case LG_EV_TOOL:
		if (w->ntools == LG_MAX_TOOLS || w->nitems == LG_RS_ITEMS) break;
		lg_d_collect(r, type, idx, a, b, raw);
		lg_d_rs_open(r, &d, LG_EV_TOOL, w->ntools - 1);
		break;
	case LG_EV_ARGS:
		if ((k = lg_d_tool_of(w, idx)) < 0 || !a.n) break;
		at = w->tools[k].args.len;
		lg_d_collect(r, type, idx, a, b, raw);
		/* arguments of an earlier call (interleaved) are kept, not streamed: its item is done;
		 * a custom tool's input goes out whole when it is done */
		if (!it || it->kind != LG_EV_TOOL || it->tool != k || w->tools[k].args.len == at) break;
		if (lg_d_rs_tool(r, w->tools[k].name) && lg_d_rs_tool(r, w->tools[k].name)->custom) break;
		lg_d_rs_begin(r, &d, "response.function_call_arguments.delta");
		lg_d_rs_where(r, &d, LG_EV_TOOL, w->nitems - 1);
		lg_buf_addz(&d, ",\"delta\":\"");
		lg_buf_add(&d, w->tools[k].args.p + at, w->tools[k].args.len - at);
		lg_buf_addz(&d, "\"}");
		lg_d_rs_send(r, &d, "response.function_call_arguments.delta");
		break;
	case LG_EV_FINISH: lg_d_rs_close(r, &d); break;
	case LG_EV_END:
		lg_d_rs_close(r, &d);
		if (r->compact && !w->text.len) { /* a tool call or nothing: no summary is a failure */
			lg_ev_acct(r, LG_EV_ERROR, 502, lg_strz("the target wrote no summary for the compaction"));
			break;
		}
		if (r->compact) { /* the compaction item, whole: added and done */
			lg_d_rs_begin(r, &d, "response.output_item.added");
			lg_buf_addz(&d, ",\"output_index\":0,\"item\":");
			lg_d_rs_compaction(r, &d);
			lg_buf_addc(&d, '}');
			lg_d_rs_send(r, &d, "response.output_item.added");
			lg_d_rs_begin(r, &d, "response.output_item.done");
			lg_buf_addz(&d, ",\"output_index\":0,\"item\":");
			lg_d_rs_compaction(r, &d);
			lg_buf_addc(&d, '}');
			lg_d_rs_send(r, &d, "response.output_item.done");
		}
		st = lg_d_rs_status(w);
		st = strcmp(st, "incomplete") == 0 ? "response.incomplete" : "response.completed";
		lg_d_rs_begin(r, &d, st);
		lg_buf_addz(&d, ",\"response\":");
		lg_d_rs_obj(r, &d, lg_d_rs_status(w), 1, NULL);
		lg_buf_addc(&d, '}');
		lg_d_rs_send(r, &d, st);
		break;
	default: break;
	}
	lg_buf_free(&d);
}

/* The collected answer as a response object. */
static void lg_d_rs_final(struct lg_req *r, struct lg_buf *o)
{
	if (r->compact && !r->w->text.len) { /* a tool call or nothing: the attempt failed */
		lg_ev_acct(r, LG_EV_ERROR, 502, lg_strz("the target wrote no summary for the compaction"));
		return;
	}
	lg_d_rs_obj(r, o, lg_d_rs_status(r->w), 1, NULL);
	lg_buf_addc(o, '\n');
}

/* A failure after the first byte: an error event, then response.failed
 * with what was written so far (never response.completed). */
static LG_COLD void lg_d_rs_stream_error(struct lg_req *r, const char *msg)
{
	struct lg_buf d;
	lg_buf_init(&d, 0);
	lg_d_rs_begin(r, &d, "error");
	lg_buf_printf(&d, ",\"code\":\"%s\",\"message\":", r->err_status == 429 ? "rate_limit_exceeded" : "server_error");
	lg_json_wz(&d, msg);
	lg_buf_addz(&d, ",\"param\":null}");
	lg_d_rs_send(r, &d, "error");
	lg_d_rs_begin(r, &d, "response.failed");
	lg_buf_addz(&d, ",\"response\":");
	lg_d_rs_obj(r, &d, "failed", r->w != NULL && !r->compact, msg); /* native: what went out is the upstream's;
	                                                                       compaction: no half summary */
	lg_buf_addc(&d, '}');
	lg_d_rs_send(r, &d, "response.failed");
	lg_buf_free(&d);
}

/* The first row is the default: requests before their endpoint is known
 * get its errors. */
/* Reads a Responses usage object into r->usage and prices it. */
static void lg_p_rs_usage(struct lg_req *r, const struct lg_json *j, const char *s, int u)
{
	struct lg_usage *us = &r->usage;
	if (lg_json_type(j, u) != LG_J_OBJ) return;
	us->prompt = lg_json_i64(j, s, lg_json_get(j, s, u, "input_tokens"));
	us->completion = lg_json_i64(j, s, lg_json_get(j, s, u, "output_tokens"));
	us->cached = lg_json_i64(j, s, lg_json_get(j, s, lg_json_get(j, s, u, "input_tokens_details"), "cached_tokens"));
	us->reasoning =
	    lg_json_i64(j, s, lg_json_get(j, s, lg_json_get(j, s, u, "output_tokens_details"), "reasoning_tokens"));
	us->cache_write = 0;
	lg_ev_acct(r, LG_EV_USAGE, 0, LG_NOSTR);
}

/* A response object's end, read into the request: usage, how it finished
 * (incomplete: cut; a function_call or custom_tool_call item: tools). */
static void lg_p_rs_end(struct lg_req *r, const struct lg_json *j, const char *s, int resp)
{
	lg_str st = lg_jesc(j, s, lg_json_get(j, s, resp, "status"));
	int out = lg_json_get(j, s, resp, "output"), fin = LG_FIN_STOP;
	uint32_t i;
	lg_p_rs_usage(r, j, s, lg_json_get(j, s, resp, "usage"));
	if (lg_str_eq(st, "incomplete")) {
		lg_str why = lg_jesc(j, s, lg_json_get(j, s, lg_json_get(j, s, resp, "incomplete_details"), "reason"));
		fin = lg_str_eq(why, "content_filter") ? LG_FIN_FILTER : LG_FIN_LENGTH;
	}
	for (i = 0; fin == LG_FIN_STOP && lg_json_type(j, out) == LG_J_ARR && i < j->t[out].size; i++) {
		lg_str ty = lg_jesc(j, s, lg_json_get(j, s, lg_json_at(j, out, i), "type"));
		if (lg_str_eq(ty, "function_call") || lg_str_eq(ty, "custom_tool_call")) fin = LG_FIN_TOOLS;
	}
	lg_ev_acct(r, LG_EV_FINISH, fin, LG_NOSTR);
}

/* A native Responses stream event: passed on with the public model name
 * (and the usage's cost) in the response objects it carries; usage,
 * finish, errors and text read into the request. */
static void lg_d_rs_native_event(struct lg_req *r, lg_str evname, lg_str data)
{
	struct lg_json j;
	const char *s = data.p;
	struct lg_buf o, clean;
	lg_str ty;
	char name[64];
	int seq, resp;
	if (r->stream_done) return; /* nothing after the end (or after an error ended it) */
	if (evname.n > 9 && !lg_str_eq(evname, "response.created") && !lg_str_eq(evname, "response.in_progress") &&
	    !lg_str_eq(evname, "response.completed") && !lg_str_eq(evname, "response.incomplete") &&
	    !lg_str_eq(evname, "response.failed")) {
		/* the hot path (deltas, items, parts): named events that carry no response object pass
		 * untouched, not tokenized; the sequence number found, a delta's text estimated from its
		 * size past the envelope (about 4 bytes a token) */
		const char *sq = lg_memfind(data.p, data.n, "\"sequence_number\""), *de = data.p + data.n;
		if (sq) {
			int64_t v = 0;
			for (sq += 17; sq < de && (*sq == ' ' || *sq == ':'); sq++) {
			}
			for (; sq < de && *sq >= '0' && *sq <= '9' && v < INT32_MAX; sq++) v = v * 10 + (*sq - '0');
			r->rs_seq = (int)LG_MIN(v + 1, (int64_t)INT32_MAX);
		}
		if (evname.n > 6 && !memcmp(evname.p + evname.n - 6, ".delta", 6))
			lg_ev_acct(r, LG_EV_TEXT, data.n > 140 ? (int)(((int64_t)data.n - 140 + 3) / 4) : 1, LG_NOSTR);
		memcpy(name, evname.p, LG_MIN(evname.n, 60)); /* no printf: this runs for every event */
		name[LG_MIN(evname.n, 60)] = 0;
		lg_native_send(r, name, data.p, data.n, 0, 0);
		return;
	}
	if ((lg_str_eq(evname, "error") || lg_str_eq(evname, "response.failed")) && lg_scrub(r->cfg, data.p, data.n, &clean)) {
		/* passed on, never with the credential it may quote */
		lg_d_rs_native_event(r, evname, lg_str_of(clean.p, clean.len));
		lg_buf_free(&clean);
		return;
	}
	memset(&j, 0, sizeof j);
	if (lg_req_json(r, &j, data.p, data.n) <= 0 || j.t[0].type != LG_J_OBJ) {
		lg_native_send(r, evname.n ? lg_arena_strn(&r->a, evname.p, LG_MIN(evname.n, 60)) : NULL, data.p, data.n, 0, 0);
		return;
	}
	ty = lg_jesc(&j, s, lg_json_get(&j, s, 0, "type"));
	if (!ty.n) ty = evname;
	snprintf(name, sizeof name, "%.*s", (int)LG_MIN(ty.n, 60), ty.p);
	if ((seq = lg_json_get(&j, s, 0, "sequence_number")) >= 0) r->rs_seq = (int)lg_json_i64(&j, s, seq) + 1;
	resp = lg_json_get(&j, s, 0, "response");
	if (lg_str_eq(ty, "response.output_text.delta") || lg_str_eq(ty, "response.function_call_arguments.delta") ||
	    lg_str_eq(ty, "response.custom_tool_call_input.delta") || lg_str_eq(ty, "response.reasoning_summary_text.delta")) {
		lg_str dl = lg_jesc(&j, s, lg_json_get(&j, s, 0, "delta"));
		lg_ev_acct(r, LG_EV_TEXT, dl.n ? (int)((dl.n + 3) / 4) : 1, LG_NOSTR);
	} else if (lg_str_eq(ty, "response.completed") || lg_str_eq(ty, "response.incomplete")) {
		lg_p_rs_end(r, &j, s, resp);
	} else if (lg_str_eq(ty, "response.failed")) { /* the end; an error event before it is passed on */
		lg_str m = lg_jesc(&j, s, lg_json_get(&j, s, lg_json_get(&j, s, resp, "error"), "message"));
		lg_ev_acct(r, LG_EV_ERROR, 502, m.n ? m : lg_strz("the response failed"));
	} else if (lg_str_eq(ty, "response.created") && !r->rs_id) {
		lg_str id = lg_jesc(&j, s, lg_json_get(&j, s, resp, "id"));
		if (id.n && id.n < 200) r->rs_id = lg_arena_strn(&r->a, id.p, id.n);
	}
	lg_buf_init(&o, 0);
	if (resp >= 0)
		lg_native_obj(r, &j, s, 0, &o, 0, NULL);
	else
		lg_buf_adds(&o, data);
	lg_native_send(r, name, o.p, o.len,
	               lg_str_eq(ty, "response.created") || lg_str_eq(ty, "response.in_progress") || lg_str_eq(ty, "error"),
	               lg_str_eq(ty, "response.failed"));
	lg_buf_free(&o);
	if (lg_str_eq(ty, "response.completed") || lg_str_eq(ty, "response.incomplete"))
		lg_ev_acct(r, LG_EV_END, 0, LG_NOSTR);
}

static int lg_d_rs_native_full(struct lg_req *r, const char *s, size_t n, struct lg_buf *o)
{
	struct lg_json j;
	memset(&j, 0, sizeof j);
	if (lg_req_json(r, &j, s, n) <= 0 || j.t[0].type != LG_J_OBJ) return -1;
	if (lg_str_eq(lg_jesc(&j, s, lg_json_get(&j, s, 0, "status")), "failed")) {
		lg_str m = lg_jesc(&j, s, lg_json_get(&j, s, lg_json_get(&j, s, 0, "error"), "message"));
		lg_ev_acct(r, LG_EV_ERROR, 502, m.n ? m : lg_strz("the response failed"));
		return -1;
	}
	lg_p_rs_end(r, &j, s, 0);
	lg_native_obj(r, &j, s, 0, o, 1, NULL);
	return o->err ? -1 : 1;
}

/* A native stream whose upstream finished without its closing event:
 * nothing to add (response.completed carries what only the upstream has). */
static void lg_d_rs_native_end(struct lg_req *r) { LG_UNUSED(r); }

static const struct lg_dialect lg_dialects[] = {
    {"openai", LG_WIRE_OPENAI, lg_canon_openai, lg_d_oa_stream, lg_d_oa_final, lg_d_oa_error, lg_d_oa_stream_error,
     lg_prov_openai_event, lg_d_oa_native_full, lg_d_oa_native_end, lg_d_oa_models, "x-api-key", NULL, 0},
    {"anthropic", LG_WIRE_ANTHROPIC, lg_canon_anthropic, lg_d_an_stream, lg_d_an_final, lg_d_an_error,
     lg_d_an_stream_error, lg_d_an_native_event, lg_d_an_native_full, lg_d_an_native_end, lg_d_an_models,
     "x-api-key", "x-should-retry: false\r\n", 1},
    /* native to openai and azure providers with responses = yes (lg_native) */
    {"responses", LG_WIRE_RESPONSES, lg_canon_responses, lg_d_rs_stream, lg_d_rs_final, lg_d_oa_error,
     lg_d_rs_stream_error, lg_d_rs_native_event, lg_d_rs_native_full, lg_d_rs_native_end, lg_d_oa_models,
     "x-api-key", NULL, 1},
};
#define LG_DIALECT_OPENAI (&lg_dialects[0])
#define LG_DIALECT_ANTHROPIC (&lg_dialects[1])
#define LG_DIALECT_RESPONSES (&lg_dialects[2])

/* ===== 12. Router ====================================================== */

/* shared state, through the store (section 13a) */
static struct lg_health *lg_st_health(struct llmgw *gw, const char *prov, const char *model);
static const char *lg_st_affinity(struct llmgw *gw, uint32_t h);
static int lg_st_take(struct lg_req *r, const struct lg_cand *cd);
static void lg_st_report(struct lg_req *r, const struct lg_cand *cd, int ok);
static void lg_st_remember(struct lg_req *r, const char *target, int64_t ms);

/* The plan of a request: the ordered candidates left after the key's and
 * the request's policies. Attempts walk it until one succeeds, max_attempts
 * is spent, or the first byte went to the client. */

static int lg_route_in_list(const struct lg_json *j, const char *s, int arr, const char *name)
{
	uint32_t i;
	for (i = 0; lg_json_type(j, arr) == LG_J_ARR && i < j->t[arr].size; i++)
		if (lg_str_eq(lg_json_raw(j, s, lg_json_at(j, arr, i)), name)) return 1;
	return 0;
}

static int lg_route_key_allows(const struct lg_key *k, const char *model)
{
	int i;
	if (!k || k->nmodels == 0) return 1;
	for (i = 0; i < k->nmodels; i++)
		if (lg_glob(k->models[i], lg_strz(model))) return 1;
	return 0;
}

/* --- health: what real traffic says about each target ------------------- */

/* Per target ("provider/upstream model") and per provider (in-flight
 * count), keyed by name so it survives reloads for targets that remain. */
struct lg_health {
	struct lg_health *next;
	char id[200];
	double ttft, tps;     /* smoothed time to first token (ms) and tokens/s; 0: no data */
	int fails, state, probing, inflight;
	int64_t open_until, cooldown;
	uint64_t ok, bad;
};

enum { LG_BRK_CLOSED, LG_BRK_OPEN, LG_BRK_HALF };
#define LG_BREAKER_FAILS LLMGW_BREAKER_FAILS
#define LG_BREAKER_COOL LLMGW_BREAKER_COOL_MS
#define LG_AFF_SLOTS 4096 /* prompt-cache affinity entries */

struct lg_rstate {
	struct lg_health *tab[256];
	struct {
		uint32_t h;
		char target[200];
		int64_t until;
	} aff[LG_AFF_SLOTS];
	unsigned long long aff_hits;
};

/* Whether a health entry belongs to the running configuration: its
 * provider is configured and, for a target, a model lists it (or the
 * provider takes direct requests). Entries are kept across reloads (a
 * request in flight may hold one); /metrics shows only these. */
static int lg_route_health_live(const struct lg_cfg *c, const struct lg_health *h)
{
	const char *sl = strchr(h->id, '/');
	const struct lg_provider *p = lg_cfg_find_provider(c, h->id, sl ? (size_t)(sl - h->id) : strlen(h->id));
	int m, i;
	if (h->inflight) return 1;
	if (!p) return 0;
	if (!sl || p->direct) return 1;
	for (m = 0; m < c->nmodels; m++)
		for (i = 0; i < c->models[m]->nt; i++) {
			const struct lg_target *t = &c->models[m]->t[i];
			if (t->prov == p && strcmp(t->upstream, sl + 1) == 0) return 1;
		}
	return 0;
}

/* Why the breaker keeps a target out now, or NULL. */
static const char *lg_route_breaker(const struct lg_health *h, int64_t now, char *buf, size_t n)
{
	if (!h || h->state == LG_BRK_CLOSED) return NULL;
	if (h->state == LG_BRK_HALF && h->probing) return "its circuit breaker is half-open and a probe request is testing it";
	if (h->state == LG_BRK_OPEN && now < h->open_until) {
		snprintf(buf, n, "its circuit breaker is open after %d consecutive failures (%lld s of cool-down left)",
		         h->fails, (long long)((h->open_until - now + 999) / 1000));
		return buf;
	}
	return NULL;
}

/* An attempt ended: feed the health of its target. ok: 1 success, 0 a
 * failure that counts (connect, timeout, 5xx, 429), -1 neutral. */
static void lg_route_done(struct lg_req *r, int ok)
{
	if (!r->att_open || !r->served) return;
	r->att_open = 0;
	lg_st_report(r, r->served, ok);
}

/* Why a provider is excluded for this request, or NULL. */
static const char *lg_route_excluded(struct lg_req *r, const struct lg_provider *p, const struct lg_target *t,
                                     int prefs, char *buf, size_t n)
{
	const struct lg_key *k = r->key;
	const char *s = r->body;
	const struct lg_json *j = &r->j;
	int i, ok;
	if (r->cfg->zdr && !p->zdr) return "gateway zdr = yes and the provider is not zdr";
	if (k && k->zdr && !p->zdr) return "the key requires zdr providers";
	if (k && k->data_deny && p->collects_data) return "the key denies data collection";
	if (k && k->nregions) {
		for (i = 0, ok = 0; i < k->nregions; i++)
			if (p->region && strcmp(p->region, k->regions[i]) == 0) ok = 1;
		if (!ok) return "the provider's region is not among the key's regions";
	}
	if (r->ep == LG_EP_EMBED && !(p->row->caps & LG_CAP_EMBED)) return "the provider type has no embeddings";
	if (t && t->context && (int64_t)r->body_len / 5 > (int64_t)t->context) {
		snprintf(buf, n, "the prompt (about %lld tokens or more) exceeds its context of %lld tokens",
		         (long long)(r->body_len / 5), (long long)t->context);
		return buf;
	}
	if (prefs >= 0) {
		int only = lg_json_get(j, s, prefs, "only"), ign = lg_json_get(j, s, prefs, "ignore");
		int dc = lg_json_get(j, s, prefs, "data_collection"), mp = lg_json_get(j, s, prefs, "max_price");
		if (only >= 0 && !lg_route_in_list(j, s, only, p->name)) return "provider.only of the request";
		if (ign >= 0 && lg_route_in_list(j, s, ign, p->name)) return "provider.ignore of the request";
		if (lg_json_truthy(j, lg_json_get(j, s, prefs, "zdr")) && !p->zdr)
			return "provider.zdr of the request";
		if (dc >= 0 && lg_str_eq(lg_json_raw(j, s, dc), "deny") && p->collects_data)
			return "provider.data_collection = deny of the request";
		if (lg_json_type(j, mp) == LG_J_OBJ && t) {
			double pin = lg_json_num(j, s, lg_json_get(j, s, mp, "prompt"), -1);
			double pout = lg_json_num(j, s, lg_json_get(j, s, mp, "completion"), -1);
			if ((pin >= 0 && t->in > pin) || (pout >= 0 && t->out > pout)) {
				snprintf(buf, n, "provider.max_price of the request (target costs %g/%g USD per M tokens)",
				         t->in, t->out);
				return buf;
			}
		}
	}
	return NULL;
}

/* Unescaped copy of a JSON string token in the request's arena. */
static const char *lg_route_strdup(struct lg_req *r, int t)
{
	lg_str raw = lg_json_raw(&r->j, r->body, t);
	char *o = (char *)lg_arena_alloc(&r->a, raw.n + 1);
	long n;
	if (!o) return NULL;
	n = lg_json_unescape(raw.p, raw.n, o);
	if (n < 0) return NULL;
	o[n] = 0;
	return o;
}

static void lg_route_add(struct lg_req *r, struct lg_provider *p, const struct lg_target *t,
                         const char *upstream, const char *model, int prefs, int group, struct lg_buf *why)
{
	char buf[200];
	const char *ex = lg_route_excluded(r, p, t, prefs, buf, sizeof buf);
	struct lg_cand *cd;
	int i;
	if (ex) {
		lg_buf_printf(why, "%s%s %s excluded: %s", why->len ? "; " : "", p->name, upstream, ex);
		return;
	}
	for (i = 0; i < r->nplan; i++) /* the same target twice adds nothing */
		if (r->plan[i].prov == p && strcmp(r->plan[i].upstream, upstream) == 0) return;
	if (r->nplan == LLMGW_MAX_PLAN) return;
	cd = &r->plan[r->nplan++];
	cd->prov = p;
	cd->t = t;
	cd->upstream = upstream;
	cd->model = model;
	cd->group = group;
	/* health is kept for configured targets only: direct names are the client's to invent */
	cd->h = t ? lg_st_health(r->gw, p->name, upstream) : NULL;
	cd->ph = lg_st_health(r->gw, p->name, NULL);
}

/* Sort keys of the strategies: lower first. */
static double lg_route_key(struct lg_req *r, const struct lg_cand *cd, int strat)
{
	const struct lg_target *t = cd->t;
	switch (strat) {
	case LG_STRAT_PRICE: /* the estimated cost of this request */
		return t ? ((double)r->prompt_est * t->in + (double)(r->max_out ? r->max_out : 1000) * t->out) : 0;
	case LG_STRAT_LATENCY: return cd->h ? cd->h->ttft : 0; /* no data yet: try it first */
	case LG_STRAT_THROUGHPUT: return cd->h && cd->h->tps > 0 ? -cd->h->tps : -1e18;
	default: return 0;
	}
}

/* Orders the candidates plan[from, to) by a strategy (stable). */
static void lg_route_sort(struct lg_req *r, int from, int to, int strat)
{
	int i, k;
	if (to - from < 2 || strat == LG_STRAT_ORDER) return;
	if (strat == LG_STRAT_WEIGHTED) { /* a random order, drawn by weight */
		for (i = from; i < to - 1; i++) {
			double tot = 0, x;
			for (k = i; k < to; k++) tot += r->plan[k].t ? r->plan[k].t->weight : 1;
			x = (double)(lg_rand(&r->gw->rng) >> 11) / 9007199254740992.0 * tot;
			for (k = i; k < to - 1; k++) {
				x -= r->plan[k].t ? r->plan[k].t->weight : 1;
				if (x < 0) break;
			}
			if (k != i) {
				struct lg_cand c = r->plan[k];
				memmove(&r->plan[i + 1], &r->plan[i], (size_t)(k - i) * sizeof c);
				r->plan[i] = c;
			}
		}
		return;
	}
	for (i = from + 1; i < to; i++) { /* insertion sort: few candidates, stable */
		struct lg_cand c = r->plan[i];
		double key = lg_route_key(r, &c, strat);
		for (k = i; k > from && lg_route_key(r, &r->plan[k - 1], strat) > key; k--) r->plan[k] = r->plan[k - 1];
		r->plan[k] = c;
	}
}

/* Adds the candidates of one model name. 0, or an HTTP status with msg. */
static int lg_route_model(struct lg_req *r, const char *name, int primary, int prefs, int sort,
                          struct lg_buf *why, char *msg, size_t mlen)
{
	char base[300];
	size_t bl = strlen(name);
	struct lg_model *m;
	int i, from = r->nplan, strat;
	/* ":floor" sorts by price, ":nitro" by throughput */
	lg_cpy(base, sizeof base, name);
	if (bl > 6 && strcmp(name + bl - 6, ":floor") == 0) base[bl - 6] = 0, sort = LG_STRAT_PRICE;
	if (bl > 6 && strcmp(name + bl - 6, ":nitro") == 0) base[bl - 6] = 0, sort = LG_STRAT_THROUGHPUT;
	m = lg_cfg_find_model(r->cfg, lg_strz(base));
	if (!lg_route_key_allows(r->key, m ? m->name : base)) {
		if (primary) {
			snprintf(msg, mlen, "key '%s' is not allowed to use model '%s'", r->key->name, base);
			return 403;
		}
		lg_buf_printf(why, "%smodel %s excluded: not allowed for the key", why->len ? "; " : "", base);
		return 0;
	}
	if (m) {
		for (i = 0; i < m->nt; i++)
			lg_route_add(r, m->t[i].prov, &m->t[i], m->t[i].upstream, m->name, prefs, primary ? 0 : 1, why);
		strat = sort >= 0 ? sort : m->strategy;
	} else {
		const char *slash = strchr(base, '/');
		struct lg_provider *p = slash ? lg_cfg_find_provider(r->cfg, base, (size_t)(slash - base)) : NULL;
		if (!p || !p->direct || !slash[1]) {
			if (primary) {
				snprintf(msg, mlen, "model '%s' is not configured%s", base,
				         p ? " (its provider does not allow direct requests: direct = yes)"
				           : " (GET /v1/models lists the models)");
				return 404;
			}
			lg_buf_printf(why, "%smodel %s is not configured", why->len ? "; " : "", base);
			return 0;
		}
		if (r->key && r->key->budget > 0) {
			if (primary) {
				snprintf(msg, mlen, "key '%s' has a budget, and direct requests (%s) have no prices to "
				                    "charge: use a configured model", r->key->name, base);
				return 403;
			}
			lg_buf_printf(why, "%smodel %s excluded: no prices for a key with a budget", why->len ? "; " : "", base);
			return 0;
		}
		lg_route_add(r, p, NULL, lg_arena_strn(&r->a, slash + 1, strlen(slash + 1)),
		             lg_arena_strn(&r->a, base, strlen(base)), prefs, primary ? 0 : 1, why);
		strat = sort >= 0 ? sort : LG_STRAT_ORDER;
	}
	lg_route_sort(r, from, r->nplan, strat);
	return 0;
}

/* Orders the plan by provider.order of the request (listed providers
 * first, in that order; the rest keep their place after them). */
static void lg_route_order(struct lg_req *r, int order)
{
	struct lg_cand tmp[LLMGW_MAX_PLAN];
	int n = 0, i;
	uint32_t k;
	char used[LLMGW_MAX_PLAN];
	memset(used, 0, sizeof used);
	for (k = 0; k < r->j.t[order].size; k++) {
		lg_str want = lg_json_raw(&r->j, r->body, lg_json_at(&r->j, order, k));
		for (i = 0; i < r->nplan; i++)
			if (!used[i] && lg_str_eq(want, r->plan[i].prov->name)) tmp[n++] = r->plan[i], used[i] = 1;
	}
	for (i = 0; i < r->nplan; i++)
		if (!used[i]) tmp[n++] = r->plan[i];
	memcpy(r->plan, tmp, (size_t)n * sizeof tmp[0]);
}

/* The plan's first group starts with target (a "provider/model" health id)
 * when it holds it: the prompt was last served there. */
static void lg_route_affine(struct lg_req *r, const char *target)
{
	int i;
	for (i = 0; i < r->nplan && r->plan[i].group == 0; i++)
		if (r->plan[i].h && strcmp(r->plan[i].h->id, target) == 0) {
			struct lg_cand c = r->plan[i];
			memmove(&r->plan[1], &r->plan[0], (size_t)i * sizeof c);
			r->plan[0] = c;
			r->aff_hit = 1;
			return;
		}
}

/* Prompt-cache affinity: the key, model and prompt prefix (the first two
 * messages: usually the system prompt and the first user turn; for
 * Responses its instructions and first input item, the first two without
 * instructions, or the client's prompt_cache_key). */
static void lg_route_affinity(struct lg_req *r, const struct lg_model *m)
{
	int rs = LG_EP_RS(r->ep), msgs = r->tk[rs ? LG_TK_INPUT : LG_TK_MESSAGES], k, nk = 2;
	int pk = rs ? lg_json_get(&r->j, r->body, 0, "prompt_cache_key") : -1, keyed = lg_json_type(&r->j, pk) == LG_J_STR;
	uint32_t h = 0;
	const char *target;
	if (!m || !m->affinity_ms || (lg_json_type(&r->j, msgs) != LG_J_ARR && !rs)) return;
	if (r->key) h = lg_crc32(h, r->key->name, strlen(r->key->name) + 1);
	h = lg_crc32(h, m->name, strlen(m->name) + 1);
	if (keyed) {
		lg_str sp = lg_json_raw(&r->j, r->body, pk);
		h = lg_crc32(h, sp.p, sp.n);
	} else if (rs) {
		lg_str sp = r->tk[LG_TK_INSTRUCTIONS] >= 0 ? lg_json_span(&r->j, r->body, r->tk[LG_TK_INSTRUCTIONS])
		                                          : lg_str_of("", 0);
		h = lg_crc32(h, sp.p, sp.n);
		if (sp.n) nk = 1; /* the instructions are the system prompt */
		if (lg_json_type(&r->j, msgs) == LG_J_STR) {
			sp = lg_json_span(&r->j, r->body, msgs);
			h = lg_crc32(h, sp.p, sp.n);
		}
	}
	for (k = 0; !keyed && lg_json_type(&r->j, msgs) == LG_J_ARR && k < nk && (uint32_t)k < r->j.t[msgs].size; k++) {
		lg_str sp = lg_json_span(&r->j, r->body, lg_json_at(&r->j, msgs, (uint32_t)k));
		h = lg_crc32(h, sp.p, sp.n);
	}
	r->aff_hash = h | 1; /* 0 means none */
	if ((target = lg_st_affinity(r->gw, r->aff_hash))) lg_route_affine(r, target);
}

/* Drops what the breakers and provider max_concurrency keep out now. */
static void lg_route_health_filter(struct lg_req *r, struct lg_buf *why)
{
	int i, n = 0;
	char buf[160];
	for (i = 0; i < r->nplan; i++) {
		const struct lg_cand *cd = &r->plan[i];
		const char *ex = lg_route_breaker(cd->h, r->gw->now, buf, sizeof buf);
		if (!ex && cd->prov->max_concurrency && cd->ph && cd->ph->inflight >= cd->prov->max_concurrency)
			ex = "the provider is at its max_concurrency";
		if (ex) {
			lg_buf_printf(why, "%s%s %s excluded: %s", why->len ? "; " : "", cd->prov->name, cd->upstream, ex);
			continue;
		}
		r->plan[n++] = *cd;
	}
	r->nplan = n;
}

static int lg_route_plan(struct lg_req *r, char *msg, size_t mlen)
{
	const struct lg_json *j = &r->j;
	int prefs = r->tk[LG_TK_PROVIDER], models, st, i, sort = -1;
	uint32_t k;
	struct lg_buf why;
	struct lg_model *m;
	char base[300];
	size_t bl;
	if (lg_json_type(j, prefs) != LG_J_OBJ) prefs = -1;
	if (prefs >= 0) {
		lg_str so = lg_jesc(j, r->body, lg_json_get(j, r->body, prefs, "sort"));
		if (lg_str_eq(so, "price")) sort = LG_STRAT_PRICE;
		if (lg_str_eq(so, "latency")) sort = LG_STRAT_LATENCY;
		if (lg_str_eq(so, "throughput")) sort = LG_STRAT_THROUGHPUT;
	}
	r->prompt_est = (int64_t)(r->body_len + 3) / 4;
	/* both limits may be set: the larger is reserved (and sent when translating) */
	r->max_out = LG_MAX(lg_json_i64(j, r->body, r->tk[LG_TK_MAX_COMPLETION_TOKENS]),
	                    lg_json_i64(j, r->body, r->tk[LG_TK_MAX_TOKENS]));
	r->max_out = LG_MAX(r->max_out, lg_json_i64(j, r->body, r->tk[LG_TK_MAX_OUTPUT_TOKENS])); /* Responses */
	lg_buf_init(&why, 4096);
	if ((st = lg_route_model(r, r->model_req, 1, prefs, sort, &why, msg, mlen))) goto out;
	models = r->tk[LG_TK_MODELS];
	for (k = 0; lg_json_type(j, models) == LG_J_ARR && k < j->t[models].size; k++) {
		const char *name = lg_route_strdup(r, lg_json_at(j, models, k));
		if (name && (st = lg_route_model(r, name, 0, prefs, sort, &why, msg, mlen))) goto out;
	}
	bl = lg_cpy(base, sizeof base, r->model_req);
	if (bl > 6 && (strcmp(base + bl - 6, ":floor") == 0 || strcmp(base + bl - 6, ":nitro") == 0)) base[bl - 6] = 0;
	if ((m = lg_cfg_find_model(r->cfg, lg_strz(base))))
		for (i = 0; i < m->nfallbacks; i++)
			if ((st = lg_route_model(r, m->fallbacks[i], 0, prefs, sort, &why, msg, mlen))) goto out;
	if (prefs >= 0) {
		int order = lg_json_get(j, r->body, prefs, "order");
		if (lg_json_type(j, order) == LG_J_ARR) lg_route_order(r, order);
	}
	lg_route_health_filter(r, &why);
	/* affinity only among healthy targets, and never over an explicit order or sort of the request */
	if (prefs < 0 || (lg_json_get(j, r->body, prefs, "order") < 0 && lg_json_get(j, r->body, prefs, "sort") < 0))
		lg_route_affinity(r, m);
	if (prefs >= 0 && lg_json_type(j, lg_json_get(j, r->body, prefs, "allow_fallbacks")) == LG_J_FALSE &&
	    r->nplan > 1)
		r->nplan = 1;
	if (r->nplan == 0) {
		snprintf(msg, mlen, "no provider satisfies the policy for model '%s': %.*s", r->model_req,
		         (int)why.len, why.p ? why.p : "");
		st = 503;
	}
out:
	lg_buf_free(&why);
	return st;
}

static void lg_route_next(struct lg_req *r);

/* Does word w hold secret z, its first 16 bytes (a quote cut short) or a
 * masked form of a credential ("sk-ab****wxyz")? */
static int lg_scrub_hit(lg_str w, const char *z)
{
	size_t zn = z ? strlen(z) : 0, k = LG_MIN(zn, 16), i;
	if (zn < 6) return 0;
	for (i = 0; i + k <= w.n; i++)
		if (w.p[i] == z[0] && memcmp(w.p + i, z, k) == 0) return 1;
	return 0;
}

/* What ends a word for lg_scrub: blanks, quotes and JSON or list punctuation. */
static int lg_scrub_sep(char c) { return c && strchr(" \t\r\n\"',;()[]{}<>", c) != NULL; }

/* Text from an upstream with every configured provider secret, anything
 * that starts like one, and every masked credential (a word with "***")
 * replaced by [redacted], in out. 0: nothing found (out untouched). */
static LG_COLD int lg_scrub(const struct lg_cfg *c, const char *p, size_t n, struct lg_buf *out)
{
	size_t i = 0, run = 0;
	int hits = 0;
	while (i < n) {
		size_t st;
		int bad, k;
		lg_str w;
		while (i < n && lg_scrub_sep(p[i])) i++;
		st = i;
		while (i < n && !lg_scrub_sep(p[i])) i++;
		if (i == st) break;
		w = lg_str_of(p + st, i - st);
		bad = w.n >= 3 && lg_memfind(w.p, w.n, "***") != NULL;
		for (k = 0; !bad && k < c->nprov; k++) {
			const struct lg_provider *pv = c->prov[k];
			bad = lg_scrub_hit(w, pv->api_key) || lg_scrub_hit(w, pv->aws_secret_access_key) ||
			      lg_scrub_hit(w, pv->aws_session_token);
		}
		if (!bad) continue;
		if (!hits++) lg_buf_init(out, 0);
		lg_buf_add(out, p + run, st - run);
		lg_buf_addz(out, "[redacted]");
		run = i;
	}
	if (!hits) return 0;
	lg_buf_add(out, p + run, n - run);
	return 1;
}

/* src[0..n) scrubbed, then cut to fit dst (cap bytes, NUL included): the
 * scrub sees the whole text, so a cut cannot leave part of a secret. */
static LG_COLD void lg_scrub_cpy(const struct lg_cfg *c, char *dst, size_t cap, const char *src, size_t n)
{
	struct lg_buf o;
	int hit = lg_scrub(c, src, n, &o);
	if (hit) src = o.err || !o.p ? "" : o.p, n = o.err ? 0 : o.len;
	if (cap) {
		n = LG_MIN(n, cap - 1);
		memcpy(dst, src, n);
		dst[n] = 0;
	}
	if (hit) lg_buf_free(&o);
}

/* Why the upstream said no, from its error body, for messages and logs. */
static LG_COLD void lg_route_upstream_msg(struct lg_req *r, char *out, size_t n)
{
	struct lg_json j;
	const char *s = lg_buf_data(&r->ubody);
	size_t len = lg_buf_used(&r->ubody);
	int e, m;
	memset(&j, 0, sizeof j);
	out[0] = 0;
	if (len && lg_req_json(r, &j, s, len) > 0) {
		e = lg_json_get(&j, s, 0, "error");
		m = lg_json_get(&j, s, lg_json_type(&j, e) == LG_J_OBJ ? e : 0, "message");
		if (lg_json_type(&j, m) == LG_J_STR) {
			char tmp[256];
			lg_str raw = lg_json_raw(&j, s, m);
			long k = lg_json_unescape(raw.p, LG_MIN(raw.n, sizeof tmp), tmp);
			if (k > 0) snprintf(out, n, "%.*s", (int)k, tmp);
			return;
		}
		if (lg_json_type(&j, e) == LG_J_STR) {
			lg_str raw = lg_json_raw(&j, s, e);
			snprintf(out, n, "%.*s", (int)LG_MIN(raw.n, 200), raw.p);
			return;
		}
	}
	if (len) {
		size_t i, k = LG_MIN(len, 120);
		for (i = 0; i < k && i + 1 < n; i++) out[i] = (s[i] >= 32 && s[i] < 127) ? s[i] : ' ';
		out[i] = 0;
	}
}

/* The attempt failed. Before the first byte to the client a retryable
 * failure moves on to the next candidate; after it the stream ends with
 * an error event, never a clean end. */
static LG_COLD void lg_route_failed(struct lg_req *r, int status, const char *reason, int retryable, int timeout)
{
	struct lg_att_log *a = &r->att[r->natt - 1];
	lg_up_release(&r->up);
	a->status = status;
	a->ms = r->gw->now - r->t_att;
	lg_cpy(a->err, sizeof a->err, reason); /* upstream text reaches here scrubbed (lg_att_end, lg_ev) */
	r->timed_out += timeout;
	lg_route_done(r, retryable && r->cc ? 0 : -1);
	if (retryable) r->retry_seen = 1;
	if (status)
		LG_LOG(r->gw, LG_LOG_WARN, "request %s: provider %s model %s failed: %s (status %d)", r->id,
		       r->served->prov->name, r->served->upstream, reason, status);
	else
		LG_LOG(r->gw, LG_LOG_WARN, "request %s: provider %s model %s failed: %s", r->id, r->served->prov->name,
		       r->served->upstream, reason);
	if (!r->cc) {
		lg_srv_finish(r);
		return;
	}
	if (r->sent_head) {
		snprintf(r->errmsg, sizeof r->errmsg, "provider %s failed in the middle of the stream: %s",
		         r->served->prov->name, reason);
		if (timeout) r->status = 504;
		lg_resp_stream_error(r, r->errmsg);
		lg_srv_finish(r);
		return;
	}
	if (retryable) {
		lg_route_next(r);
		return;
	}
	/* the upstream refused this request: its 4xx is the client's answer,
	 * except credentials, which are the gateway's problem */
	if (r->native && r->d->pass_errors && status >= 400 && status < 500 && status != 401 && status != 403 &&
	    status == r->ustatus && lg_buf_used(&r->ubody) && *lg_buf_data(&r->ubody) == '{') {
		struct lg_buf clean;
		const char *b = lg_buf_data(&r->ubody);
		size_t bn = lg_buf_used(&r->ubody);
		int sc = lg_scrub(r->cfg, b, bn, &clean);
		snprintf(r->errmsg, sizeof r->errmsg, "provider %s: %s", r->served->prov->name, reason);
		lg_resp_send(r, status, "application/json", sc ? clean.p : b, sc ? clean.len : bn, NULL);
		if (sc) lg_buf_free(&clean);
	} else if (status == 401 || status == 403)
		lg_resp_error(r, 502, NULL, "provider %s rejected the gateway's credentials (%d): %s",
		              r->served->prov->name, status, reason);
	else
		lg_resp_error(r, status >= 400 && status < 500 ? status : 502, NULL, "provider %s: %s",
		              r->served->prov->name, reason);
	lg_srv_finish(r);
}

/* Every candidate failed or max_attempts is spent. */
static LG_COLD void lg_route_exhausted(struct lg_req *r)
{
	struct lg_buf b;
	int i, st = r->natt && r->timed_out == r->natt ? 504 : 502;
	if (r->ep == LG_EP_COUNT) { /* no Anthropic target could count: llmgw's estimate */
		lg_srv_count_est(r);
		lg_srv_finish(r);
		return;
	}
	lg_buf_init(&b, 0);
	for (i = 0; i < r->natt; i++) {
		const struct lg_att_log *a = &r->att[i];
		lg_buf_printf(&b, "%s%s", i ? "; " : "", a->prov);
		if (a->status) lg_buf_printf(&b, " status %d", a->status);
		lg_buf_printf(&b, ": %s", a->err);
	}
	r->served = NULL;
	lg_resp_error(r, st, NULL, "all %d attempt%s failed for model '%s': %.*s", r->natt,
	              r->natt == 1 ? "" : "s", r->model_req, (int)b.len, b.p ? b.p : "");
	lg_buf_free(&b);
	lg_srv_finish(r);
}

/* --- the attempt's response, as the HTTP client hands it over --------- */

static void lg_att_head(void *owner, const struct lg_http *h)
{
	struct lg_req *r = (struct lg_req *)owner;
	lg_str ct = lg_http_get(h, "content-type");
	lg_str ra = lg_http_get(h, "retry-after");
	const char *want = r->served->prov->row->stream_ctype;
	size_t wl = want ? strlen(want) : 0;
	r->ustatus = h->status;
	r->streams = !want || (ct.n >= wl && lg_str_ieq(lg_str_of(ct.p, wl), want));
	if (ra.n && ra.n < 8 && ra.p[0] >= '0' && ra.p[0] <= '9') { /* seconds; an HTTP date is ignored */
		size_t i;
		int64_t v = 0;
		for (i = 0; i < ra.n && ra.p[i] >= '0' && ra.p[i] <= '9'; i++) v = v * 10 + (ra.p[i] - '0');
		r->retry_after_ms = v * 1000;
	}
}

/* Stream bytes: every complete event goes out as soon as it is here.
 * -1: the stream is damaged and the attempt ended (lg_up_fail). */
static int lg_att_events(struct lg_req *r)
{
	long (*frame)(struct lg_req *, const char *, size_t, const char **) = r->served->prov->row->frame;
	while (!r->up_error) {
		const char *err = NULL;
		size_t n = lg_buf_used(&r->ubody);
		long k = !n                      ? 0
		         : frame == lg_frame_sse ? lg_frame_sse(r, lg_buf_data(&r->ubody), n, &err) /* inlines */
		                                 : frame(r, lg_buf_data(&r->ubody), n, &err);
		if (k < 0) {
			lg_up_fail(&r->up, LG_UF_PROTO, err);
			return -1;
		}
		if (k == 0) break;
		lg_buf_consume(&r->ubody, (size_t)k);
	}
	return 0;
}

/* An error the parser recorded before the client's first byte: the
 * attempt failed (the router may try the next). 1: so it ended. */
static LG_COLD int lg_att_error(struct lg_req *r)
{
	if (!r->up_error || r->sent_head) return 0;
	lg_route_failed(r, r->err_status, r->err_reason, r->err_retry, 0);
	return 1;
}

/* An error inside the stream, after the client's first byte: it ends
 * here, not cleanly. 1: so it ended. */
static LG_COLD int lg_att_stream_error(struct lg_req *r)
{
	if (!r->up_error) return 0;
	lg_up_release(&r->up);
	lg_route_done(r, 0);
	r->att[r->natt - 1].status = r->ustatus;
	snprintf(r->att[r->natt - 1].err, sizeof r->att[0].err, "error event in the stream");
	if (!r->native) lg_resp_stream_error(r, r->errmsg);
	else { /* the provider's own error event went through as it was */
		r->status = 502;
		lg_resp_stream_end(r);
	}
	lg_srv_finish(r);
	return 1;
}

/* Response bytes of the attempt. 0 while it goes on, -1 once it ended. */
static int lg_att_take(struct lg_req *r, const char *p, size_t n)
{
	int ok2xx = r->ustatus >= 200 && r->ustatus < 300;
	size_t max = ok2xx ? LLMGW_MAX_RESPONSE : (1u << 20);
	if (!r->cc) { /* the client went away */
		lg_up_fail(&r->up, LG_UF_RESET, "client closed the connection");
		return -1;
	}
	if (lg_buf_used(&r->ubody) + n > max) {
		lg_up_fail(&r->up, LG_UF_PROTO, "upstream response larger than the limit");
		return -1;
	}
	lg_buf_add(&r->ubody, p, n);
	if (ok2xx && !r->t_att_first) r->t_att_first = r->gw->now;
	if (ok2xx && r->stream && r->streams) {
		if (lg_att_events(r) < 0 || lg_att_error(r) || lg_att_stream_error(r)) return -1;
		if (r->cc && !r->up.ending) { /* at the end, lg_srv_finish sends it with the rest */
			lg_conn_flush(r->cc);
			/* back-pressure: a slow client slows the upstream read. The
			 * upstream is not at fault while the client does not read:
			 * its idle timer stops; the client gets send_timeout */
			if (r->up.c && lg_buf_used(&r->cc->out) > LLMGW_STREAM_HIGHWATER) {
				r->up.c->flags |= LG_F_NOREAD;
				lg_timer_clear(r->gw, &r->up.tm);
				lg_timer_set(r->gw, &r->cc->tm, r->cfg->send_timeout);
				lg_up_events(&r->up);
			}
		}
	}
	return 0;
}

static void lg_att_data(void *owner, const char *p, size_t n) { lg_att_take((struct lg_req *)owner, p, n); }

/* The attempt succeeded: health learns from it, affinity remembers it. */
static void lg_route_success(struct lg_req *r)
{
	const struct lg_model *m = r->served && r->served->group == 0 && r->served->t ?
	                               lg_cfg_find_model(r->cfg, lg_strz(r->served->model)) : NULL;
	lg_route_done(r, 1);
	if (r->aff_hash && m && m->affinity_ms && r->served->h) lg_st_remember(r, r->served->h->id, m->affinity_ms);
}

static void lg_att_end(void *owner)
{
	struct lg_req *r = (struct lg_req *)owner;
	const struct lg_prov_row *row = r->served->prov->row;
	struct lg_att_log *a = &r->att[r->natt - 1];
	a->status = r->ustatus;
	a->ms = r->gw->now - r->t_att;
	if (r->ustatus < 200 || r->ustatus >= 300) {
		char why[256];
		struct lg_buf clean;
		/* an upstream may quote the credential it got: never passed on */
		if (lg_scrub(r->cfg, lg_buf_data(&r->ubody), lg_buf_used(&r->ubody), &clean)) {
			lg_buf_free(&r->ubody);
			r->ubody = clean;
		}
		if (row->retry_hint) row->retry_hint(r, lg_buf_data(&r->ubody), lg_buf_used(&r->ubody));
		lg_route_upstream_msg(r, why, sizeof why);
		lg_route_failed(r, r->ustatus, why[0] ? why : lg_resp_status_text(r->ustatus),
		                row->retryable(r->ustatus, lg_buf_data(&r->ubody), lg_buf_used(&r->ubody)),
		                r->ustatus == 504 || r->ustatus == 408);
		return;
	}
	if (r->stream) {
		if (!r->streams) {
			lg_route_failed(r, r->ustatus, "a stream was asked for but the upstream did not stream", 1, 0);
			return;
		}
		if (lg_buf_used(&r->ubody) && row->frame_flush) { /* a last event without its end */
			lg_buf_addz(&r->ubody, row->frame_flush);
			if (lg_att_events(r) < 0 || lg_att_error(r) || lg_att_stream_error(r)) return;
		}
		if (!r->stream_done && !r->saw_finish) {
			lg_route_failed(r, r->ustatus, "the stream ended before it was complete", 1, 0);
			return;
		}
		if (!r->stream_done) {
			if (r->native)
				r->d->native_end(r);
			else
				lg_ev(r, LG_EV_END, 0, LG_NOSTR, LG_NOSTR, 0);
		}
		lg_up_release(&r->up);
		lg_route_success(r);
		lg_resp_stream_end(r);
		lg_srv_finish(r);
		return;
	}
	{
		struct lg_buf o;
		const char *b = lg_buf_data(&r->ubody);
		size_t bn = lg_buf_used(&r->ubody);
		int k;
		lg_buf_init(&o, 0);
		lg_blk_take(r->gw, &o);
		if (r->ep == LG_EP_EMBED && row->embed_full)
			k = row->embed_full(r, b, bn, &o);
		else if (r->native)
			k = r->d->native_full(r, b, bn, &o);
		else if ((k = row->full(r, b, bn)) == 0 && !r->up_error) {
			r->d->final(r, &o);
			k = o.err ? -1 : 1;
		}
		if (r->up_error || k < 0) {
			lg_buf_free(&o);
			if (!lg_att_error(r))
				lg_route_failed(r, r->ustatus, "the upstream answered with malformed JSON", 1, 0);
			return;
		}
		lg_up_release(&r->up);
		lg_route_success(r);
		r->t_first = r->gw->now;
		lg_resp_send(r, 200, "application/json", o.p, o.len, NULL);
		o.off = o.len = 0;
		lg_blk_give(r->gw, &o);
		lg_srv_finish(r);
	}
}

static LG_COLD void lg_att_fail(void *owner, int kind, const char *reason)
{
	struct lg_req *r = (struct lg_req *)owner;
	lg_route_failed(r, 0, reason, 1, kind == LG_UF_TIMEOUT);
}

static void lg_route_resume(struct llmgw *gw, struct lg_timer *t)
{
	struct lg_req *r = (struct lg_req *)(void *)((char *)t - offsetof(struct lg_req, rtm));
	LG_UNUSED(gw);
	lg_route_next(r);
}

/* Starts the next attempt, or ends the request when none is left. When
 * every candidate was tried and a failure was retryable, the plan is
 * walked again after a jittered exponential backoff (at least the
 * upstream's Retry-After), if that still fits in first_byte_timeout. */
static void lg_route_next(struct lg_req *r)
{
	int k;
	for (;;) {
		const struct lg_cand *cd;
		struct lg_att_log *a;
		struct lg_upreq *u = &r->up;
		if (r->natt >= r->cfg->max_attempts) break;
		if (r->cur >= r->nplan) {
			int64_t delay = (int64_t)250 << LG_MIN(r->rounds, 6);
			if (!r->retry_seen || !r->nplan) break;
			delay = delay * 3 / 4 + (int64_t)(lg_rand(&r->gw->rng) % (uint64_t)(delay / 2 + 1));
			delay = LG_MAX(delay, r->retry_after_ms); /* never before the upstream said */
			if (r->gw->now + delay > r->t0 + r->cfg->first_byte_timeout) break;
			r->cur = 0;
			r->rounds++;
			r->retry_seen = 0;
			r->retry_after_ms = 0;
			r->rtm.fn = lg_route_resume;
			lg_timer_set(r->gw, &r->rtm, delay);
			return;
		}
		cd = &r->plan[r->cur++];
		if (r->w) {
			lg_d_free(r->w);
			memset(r->w, 0, sizeof *r->w);
		}
		r->native = lg_native(r, cd->prov);
		if (r->ep == LG_EP_COUNT && !r->native) continue; /* only Anthropic counts tokens */
		if (!r->native && r->ep != LG_EP_EMBED && !r->w &&
		    !(r->w = (struct lg_wst *)calloc(1, sizeof *r->w)))
			break;
		if (r->w) r->w->block_type = -1;
		if (lg_st_take(r, cd)) continue; /* changed since the plan was made */
		a = &r->att[r->natt++];
		memset(a, 0, sizeof *a);
		a->prov = cd->prov->name;
		r->served = cd;
		r->t_att = r->gw->now;
		r->t_att_first = 0;
		r->att_open = 1;
		r->ustatus = r->streams = r->stream_done = r->saw_finish = r->up_error = r->q_ok = 0;
		r->nheld = 0;
		r->rs_id = NULL;
		memset(&r->usage, 0, sizeof r->usage);
		r->ubody.off = r->ubody.len = 0;
		r->ubody.err = 0;
		if (cd->prov->row->run) { /* no network: the provider answers at once */
			struct lg_buf o;
			lg_buf_init(&o, 0);
			cd->prov->row->run(r, &o);
			r->ustatus = 200;
			r->streams = r->stream;
			u->state = LG_U_BODY;
			k = lg_att_take(r, o.p, o.len);
			lg_buf_free(&o);
			if (k == 0) {
				u->state = LG_U_DONE;
				lg_att_end(r);
			}
			return;
		}
		if ((k = lg_prov_build(r, cd, &u->req)) < 0) {
			lg_route_done(r, -1);
			if (k == -2) { /* the request itself cannot be sent there: the client's error */
				snprintf(a->err, sizeof a->err, "%.190s", r->canon_err);
				lg_resp_error(r, 400, NULL, "%s", r->canon_err);
				lg_srv_finish(r);
				return;
			}
			snprintf(a->err, sizeof a->err, "cannot build the upstream request");
			continue;
		}
		u->cfg = r->cfg;
		u->host = cd->prov->host;
		u->port = cd->prov->port;
		u->tls = cd->prov->tls;
		u->origin = cd->prov->origin;
		u->connect_ms = r->cfg->connect_timeout;
		u->first_byte_ms = r->cfg->first_byte_timeout;
		u->idle_ms = r->cfg->stream_idle_timeout;
		lg_up_start(u);
		return;
	}
	lg_route_exhausted(r);
}

/* ===== 13. Accounting and the state store ============================= */

/* --- 13a. the state store: the one way into shared state ---------------- */

/* What the requests of a gateway must agree on -- key spend and
 * reservations, rate and concurrency limits, target health and circuit
 * breakers, prompt affinity, the records behind /v1/generation -- is
 * reached through the calls of one struct lg_store (gw->st), and nothing
 * else touches it. lg_st_local (13f) keeps it in this process: memory
 * the loops of workers = N share under their lock, with the ledger as its
 * journal. A store shared by several gateways answers over the network,
 * so the calls that need its answer complete later: they end by calling
 * lg_st_admitted or lg_st_viewed, at once or from a later iteration of
 * the loop. Meanwhile the request waits in the loop (r->st_wait) and
 * nothing blocks; a request that ends while it waits (the client went
 * away) is cancelled first.
 *
 *   call      when                         what it does                         its answer
 *   admit     once, before the first       the plan (health read, breaker       lg_st_admitted(r, status,
 *             attempt                      state, affinity lookup, through      retry, msg): 0, or the
 *                                          lg_st_health and lg_st_affinity);    status (429, 402, 404, ...)
 *                                          the key's budget, rpm, tpm and       and why; retry: seconds
 *                                          max_concurrency; then reserves the   for Retry-After
 *                                          request's worst-case cost
 *   take      before each attempt          the target's breaker (the attempt    0, or -1: skip the target
 *                                          may be its probe) and its provider's (from what admit read)
 *                                          concurrency, checked and taken
 *   report    after each attempt           health: outcome, breaker, smoothed   -
 *                                          TTFT and tokens/s; provider slot back
 *   remember  after a successful attempt   affinity update: prompt -> target    -
 *   charge    before the client learns     the charge into the journal, so a    -
 *             the cost                     crash right after cannot lose it
 *   settle    the request ended            release (the reservation and key     -
 *                                          slot back), then the real cost in
 *                                          its place; tpm; metrics; the
 *                                          generation record put
 *   view      /v1/key, /v1/generation,     generation record get, key and       lg_st_viewed(r, fn): fn(r)
 *             /metrics                     health reads                         ran with the state readable
 *   cancel    a waiting request ends       forget the answer it waits for       - (NULL: never waits)
 */
struct lg_store {
	const char *name;
	void (*admit)(struct lg_req *r);
	int (*take)(struct lg_req *r, const struct lg_cand *cd);
	void (*report)(struct lg_req *r, const struct lg_cand *cd, int ok);
	void (*remember)(struct lg_req *r, const char *target, int64_t ms);
	void (*charge)(struct lg_req *r);
	void (*settle)(struct lg_req *r);
	void (*view)(struct lg_req *r, void (*fn)(struct lg_req *r));
	void (*cancel)(struct lg_req *r);
};
static const struct lg_store lg_st_local; /* 13f */
static void lg_srv_admitted(struct lg_req *r, int status, int retry, const char *msg); /* section 15 */

static void lg_st_admit(struct lg_req *r)
{
	r->st_wait = 1; /* inside the call */
	r->gw->st->admit(r);
	if (r->st_wait) r->st_wait = 2; /* the answer comes later */
}

/* The store's answer to admit (now, or later from the loop). */
static void lg_st_admitted(struct lg_req *r, int status, int retry, const char *msg)
{
	int later = r->st_wait == 2;
	r->st_wait = 0;
	lg_srv_admitted(r, status, retry, msg);
	if (later && !r->finished && (r->status || !r->cc)) lg_srv_finish(r);
}

static void lg_st_view(struct lg_req *r, void (*fn)(struct lg_req *r))
{
	r->st_wait = 1;
	r->gw->st->view(r, fn);
	if (r->st_wait) r->st_wait = 2;
}

/* The store's answer to view: fn writes the response from the state. */
static void lg_st_viewed(struct lg_req *r, void (*fn)(struct lg_req *r))
{
	int later = r->st_wait == 2;
	r->st_wait = 0;
	fn(r);
	if (later && !r->finished && (r->status || !r->cc)) lg_srv_finish(r);
}

/* A request that ends while the store answers it. */
static void lg_st_cancel(struct lg_req *r)
{
	if (r->st_wait && r->gw->st->cancel) r->gw->st->cancel(r);
	r->st_wait = 0;
}

static int lg_st_take(struct lg_req *r, const struct lg_cand *cd) { return r->gw->st->take(r, cd); }
static void lg_st_report(struct lg_req *r, const struct lg_cand *cd, int ok) { r->gw->st->report(r, cd, ok); }
static void lg_st_remember(struct lg_req *r, const char *target, int64_t ms) { r->gw->st->remember(r, target, ms); }
static void lg_st_charge(struct lg_req *r)
{
	if (r->ks && r->usage.cost > r->charged) r->gw->st->charge(r); /* else nothing to journal */
}
static void lg_st_settle(struct lg_req *r) { r->gw->st->settle(r); }

/* The health entry of a provider (model NULL) or of one of its targets,
 * made on first use; entries outlive reloads. Read by the plan, inside
 * admit. */
static struct lg_health *lg_st_health(struct llmgw *gw, const char *prov, const char *model)
{
	char id[200];
	uint32_t h;
	struct lg_health *e;
	if (!gw->rs && !(gw->rs = (struct lg_rstate *)calloc(1, sizeof *gw->rs))) return NULL;
	{
		size_t k = lg_cpy(id, sizeof id, prov);
		const char *q;
		if (model && k + 1 < sizeof id) {
			id[k++] = '/';
			lg_cpy(id + k, sizeof id - k, model);
		}
		for (h = 2166136261u, q = id; *q; q++) h = (h ^ (unsigned char)*q) * 16777619u;
		h &= 255;
	}
	for (e = gw->rs->tab[h]; e; e = e->next)
		if (strcmp(e->id, id) == 0) return e;
	if (!(e = (struct lg_health *)calloc(1, sizeof *e))) return NULL;
	memcpy(e->id, id, sizeof id);
	e->next = gw->rs->tab[h];
	gw->rs->tab[h] = e;
	return e;
}

/* The target a prompt was last served by, while its affinity holds. */
static const char *lg_st_affinity(struct llmgw *gw, uint32_t h)
{
	struct lg_rstate *rs = gw->rs;
	unsigned slot = h % LG_AFF_SLOTS;
	if (!rs || rs->aff[slot].h != h || rs->aff[slot].until < gw->now) return NULL;
	return rs->aff[slot].target;
}

/* Cost in USD from the target's prices (USD per million tokens). */
static double lg_acct_cost(const struct lg_target *t, const struct lg_usage *u)
{
	return t ? lg_price_cost(t, u->prompt, u->cached, u->cache_write, u->completion) : 0; /* section 5b */
}

/* --- key state: spend, reservations, rate limits ------------------------ */

/* Per key name, kept across reloads (a key renamed starts afresh). */
struct lg_kstate {
	struct lg_kstate *next;
	char name[64];
	int period;         /* the budget period of the key when last seen */
	int64_t period_id;  /* which day/week/month the spend belongs to */
	double spend;       /* USD settled in the current period */
	double reserved;    /* USD held by requests in flight */
	double total;       /* USD settled ever (since the ledger began) */
	double rpm_tok, tpm_tok; /* token buckets */
	int64_t rl_t;            /* when the buckets were last refilled (ms) */
	int rl_init;             /* buckets filled once */
	int inflight;
	/* [store] (13g): charges the store has not got (made while it was
	 * unreachable), the part of them a reconciliation in flight adds, and
	 * what the store last said: the fleet-wide spend and held, this
	 * instance's spend then, their period (st_seen: said at all) */
	double st_out, st_sent, st_fleet, st_mine;
	int64_t st_pid;
	int st_seen;
};

/* One recent request, for GET /v1/generation. */
struct lg_gen {
	uint64_t seq;
	char id[40], key[64], model[96], provider[64], upstream[96];
	int status, natt, stream;
	struct {
		char prov[48];
		int status;
		int64_t ms;
	} att[4];
	int64_t ms, ttft, prompt, completion, cached, created;
	double cost;
	int estimated;
};

#define LG_HBUCKETS 14
static const double lg_hist_le[LG_HBUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                               1,     2.5,  5,     10,   30,  60,   120};

enum { LG_M_REQUESTS, LG_M_DURATION, LG_M_TTFT, LG_M_TOKENS, LG_M_COST, LG_M_ATTEMPTS };
static const char lg_metric_names[][34] = {"llmgw_requests_total", "llmgw_request_duration_seconds",
                                              "llmgw_time_to_first_token_seconds", "llmgw_tokens_total",
                                              "llmgw_cost_usd_total", "llmgw_upstream_attempts_total"};
static const char lg_metric_help[][70] = {
    "Requests answered, by public model, provider and status.",
    "Time from request head to last response byte.",
    "Time from request head to the first byte of the answer.",
    "Tokens by key, model and kind (prompt, completion, cached).",
    "Cost in USD by key and model.",
    "Upstream attempts by provider and outcome status (0: no HTTP status)."};

struct lg_series {
	uint32_t hash;
	int metric, used;
	char labels[224];
	double v, sum;
	uint64_t count, b[LG_HBUCKETS];
};

#define LG_RING 1024 /* recent requests kept for /v1/generation */

/* Which series a request's labels name follows from the config install,
 * the configured target (model and provider), the key and a status or
 * token type: the series' index is remembered under those identities, so
 * a settled request builds and hashes label strings only on a miss.
 * Direct "provider/model" requests (no configured target) always take
 * the string path: their model name lives in the request. */
#define LG_SCACHE 256
struct lg_scent {
	unsigned long gen; /* 0: empty */
	const void *t, *k;
	int metric, x;
	unsigned idx;
};

struct lg_acct {
	struct lg_kstate *keys;
	struct lg_gen ring[LG_RING];
	struct lg_series *ser; /* open addressing, capser a power of two */
	unsigned nser, capser;
	struct lg_scent sc[LG_SCACHE]; /* series found by identity (lg_acct_rser) */
	/* the ledger (state_dir) */
	int lfd, lockfd;
	char *lpath;
	struct lg_buf lbuf; /* records waiting for the end of the iteration */
	size_t lsize;
	int unsynced;
	struct lg_timer sync_tm;
};

static struct lg_acct *lg_acct_of(struct llmgw *gw)
{
	if (!gw->acct) {
		gw->acct = (struct lg_acct *)calloc(1, sizeof *gw->acct);
		if (!gw->acct) return NULL;
		gw->acct->lfd = gw->acct->lockfd = -1;
		gw->acct->sync_tm.hidx = -1;
		lg_buf_init(&gw->acct->lbuf, 0);
	}
	return gw->acct;
}

static int64_t lg_floordiv(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/* The budget period holding time wall (ms, UTC) and when it ends. */
static int64_t lg_acct_period(int period, int64_t wall, int64_t *reset)
{
	int64_t day = lg_floordiv(wall, 86400000), w, y;
	int m, d;
	switch (period) {
	case LG_PERIOD_DAY:
		*reset = (day + 1) * 86400000;
		return day;
	case LG_PERIOD_WEEK: /* weeks start on Monday; 1970-01-01 was a Thursday */
		w = lg_floordiv(day + 3, 7);
		*reset = (7 * (w + 1) - 3) * 86400000;
		return w;
	case LG_PERIOD_MONTH:
		lg_civil_from_days(day, &y, &m, &d);
		*reset = lg_days_from_civil(m == 12 ? y + 1 : y, m == 12 ? 1 : m + 1, 1) * 86400000;
		return y * 12 + m - 1;
	default:
		*reset = 0;
		return 0;
	}
}

static struct lg_kstate *lg_acct_kstate(struct llmgw *gw, const char *name)
{
	struct lg_acct *a = lg_acct_of(gw);
	struct lg_kstate *k;
	if (!a) return NULL;
	for (k = a->keys; k; k = k->next)
		if (strcmp(k->name, name) == 0) return k;
	k = (struct lg_kstate *)calloc(1, sizeof *k);
	if (!k) return NULL;
	snprintf(k->name, sizeof k->name, "%s", name);
	k->period = -1;
	k->rl_t = gw->now;
	k->next = a->keys;
	a->keys = k;
	return k;
}

/* Brings the spend to the key's current period (a new period starts at 0). */
static void lg_acct_roll(struct lg_kstate *ks, const struct lg_key *key, int64_t wall)
{
	int64_t reset, id = lg_acct_period(key->period, wall, &reset);
	if (ks->period != key->period || ks->period_id != id) {
		if (ks->period != -1 || ks->period_id != id) ks->spend = 0;
		ks->period = key->period;
		ks->period_id = id;
	}
}

static void lg_acct_refill(struct lg_kstate *ks, const struct lg_key *key, int64_t now)
{
	double dt = (double)(now - ks->rl_t) / 60000.0;
	if (!ks->rl_init) { /* full on first use */
		ks->rl_init = 1;
		ks->rpm_tok = (double)key->rpm;
		ks->tpm_tok = (double)key->tpm;
	}
	if (ks->rpm_tok > (double)key->rpm) ks->rpm_tok = (double)key->rpm; /* a lowered limit */
	if (ks->tpm_tok > (double)key->tpm) ks->tpm_tok = (double)key->tpm;
	ks->rpm_tok = LG_MIN((double)key->rpm, ks->rpm_tok + dt * (double)key->rpm);
	ks->tpm_tok = LG_MIN((double)key->tpm, ks->tpm_tok + dt * (double)key->tpm);
	ks->rl_t = now;
}

/* What a request's images, audio and files are: parts whose "type" names
 * one, counted with the bytes they take in the body. */
struct lg_media {
	int64_t bytes;
	int64_t n[3]; /* images, audio, files */
};

static void lg_acct_media(const struct lg_req *r, struct lg_media *m)
{
	static const struct {
		const char *type;
		int kind; /* 0 image, 1 audio, 2 file */
	} kinds[] = {{"image_url", 0}, {"image", 0}, {"input_image", 0}, {"input_audio", 1}, {"audio", 1},
	             {"file", 2},      {"document", 2}, {"input_file", 2}};
	const struct lg_json *j = &r->j;
	uint32_t i = 0;
	memset(m, 0, sizeof *m);
	while (i < j->n) {
		int ty, hit = -1;
		size_t k;
		lg_str tv;
		if (j->t[i].type != LG_J_OBJ || (ty = lg_json_get(j, r->body, (int)i, "type")) < 0 ||
		    j->t[ty].type != LG_J_STR) {
			i++;
			continue;
		}
		tv = lg_json_raw(j, r->body, ty);
		for (k = 0; k < LG_COUNTOF(kinds) && hit < 0; k++)
			if (lg_str_eq(tv, kinds[k].type)) hit = kinds[k].kind;
		if (hit < 0) {
			i++;
			continue;
		}
		m->n[hit]++;
		m->bytes += j->t[i].end - j->t[i].start;
		i = j->t[i].next; /* what the part holds is counted with it */
	}
}

/* The most prompt tokens target t can count for this request: a token per
 * byte of the body (no byte-level tokenizer makes more; JSON syntax and
 * tool definitions included), each image, audio or file part at the
 * target's per-part maximum instead of its bytes, and never more than the
 * target's context (it refuses longer prompts). Per-part defaults from the
 * providers' documentation: OpenAI 1536 patches x 1.62 (about 2500
 * tokens), Anthropic and Bedrock (Claude) ~1600 (1.15 megapixels), Gemini
 * 8 tiles of 258; audio and files have no fixed bound, so the context, or
 * 32768 and 100000 tokens without one. */
static int64_t lg_acct_prompt_max(const struct lg_req *r, const struct lg_target *t, const struct lg_media *m)
{
	int64_t img = t && t->prov ? t->prov->row->image_tokens : 2500, aud, fil, n, ctx = t ? t->context : 0;
	aud = ctx > 0 ? ctx : 32768;
	fil = ctx > 0 ? ctx : 100000;
	if (t && t->image_tokens >= 0) img = t->image_tokens;
	if (t && t->audio_tokens >= 0) aud = t->audio_tokens;
	if (t && t->file_tokens >= 0) fil = t->file_tokens;
	n = (int64_t)r->body_len - m->bytes + m->n[0] * img + m->n[1] * aud + m->n[2] * fil;
	if (ctx > 0 && n > ctx) n = ctx;
	return n > 0 ? n : 0;
}

/* What a request may cost at most: prompt_max, the largest prompt any
 * candidate can count (with a budget to check), and res_out, its output limit (the larger of
 * max_tokens and max_completion_tokens, else the largest max_output of the
 * candidates, else 4096) for each of the n choices it asks for.
 * prompt_est stays the cheap estimate (a token per 4 body bytes) used
 * where llmgw must guess what was spent. */
static void lg_acct_estimate(struct lg_req *r)
{
	int64_t mo = r->max_out, nch; /* the request's own limit, read by the router */
	struct lg_media m;
	int i;
	if (!mo)
		for (i = 0; i < r->nplan; i++)
			if (r->plan[i].t && r->plan[i].t->max_output > mo) mo = r->plan[i].t->max_output;
	if (!mo) mo = 4096;
	nch = lg_json_i64(&r->j, r->body, r->tk[LG_TK_N]);
	if (nch < 1) nch = 1;
	if (nch > 1000) nch = 1000;
	r->prompt_est = (int64_t)(r->body_len + 3) / 4;
	r->prompt_max = 0;
	if (r->key && r->key->budget > 0) { /* only a budget needs the bound: it walks the body */
		lg_acct_media(r, &m);
		for (i = 0; i < r->nplan; i++)
			r->prompt_max = LG_MAX(r->prompt_max, lg_acct_prompt_max(r, r->plan[i].t, &m));
	}
	r->res_out = r->ep == LG_EP_EMBED ? 0 : mo * nch; /* r->max_out stays the request's own */
}

/* Before the first attempt: concurrency, rpm, tpm, then the budget (unless
 * budget is 0: a shared store checks it) with a worst-case reservation at
 * the priciest candidate. 0 admits (and holds what it took, the
 * reservation too); otherwise the HTTP status, with msg and *retry (s). */
static void lg_acct_resets(int period, int64_t wall, char *when, size_t n)
{
	int64_t reset;
	lg_cpy(when, n, "never (a total budget)");
	lg_acct_period(period, wall, &reset);
	if (reset) {
		time_t t = (time_t)(reset / 1000);
		struct tm tm;
		gmtime_r(&t, &tm);
		strftime(when, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
	}
}

/* The key's limits for a request, and its reservation: with local, this
 * process's books decide budget, rpm, tpm and max_concurrency; without
 * (a shared store decides them) only the reservation is booked here. */
static int lg_acct_admit(struct lg_req *r, char *msg, size_t mlen, int *retry, int local)
{
	const struct lg_key *key = r->key;
	struct lg_kstate *ks;
	double in = 0, out = 0, res;
	int64_t wall = r->wall0;
	int i;
	lg_acct_estimate(r);
	if (!key) return 0;
	if (!(ks = lg_acct_kstate(r->gw, key->name))) return 0;
	lg_acct_roll(ks, key, wall);
	lg_acct_refill(ks, key, r->gw->now);
	if (local && key->max_concurrency && ks->inflight >= key->max_concurrency) {
		snprintf(msg, mlen, "key '%s' has %d requests in flight, its max_concurrency", key->name, ks->inflight);
		*retry = 1;
		return 429;
	}
	if (local && key->rpm && ks->rpm_tok < 1) {
		*retry = (int)((1 - ks->rpm_tok) * 60.0 / (double)key->rpm) + 1;
		snprintf(msg, mlen, "key '%s' is over its rate limit of %ld requests per minute", key->name, key->rpm);
		return 429;
	}
	if (local && key->tpm && ks->tpm_tok <= 0) {
		*retry = (int)(-ks->tpm_tok * 60.0 / (double)key->tpm) + 1;
		snprintf(msg, mlen, "key '%s' is over its rate limit of %ld tokens per minute", key->name, key->tpm);
		return 429;
	}
	for (i = 0; i < r->nplan; i++)
		if (r->plan[i].t) {
			in = LG_MAX(in, r->plan[i].t->in);
			out = LG_MAX(out, r->plan[i].t->out);
		}
	res = ((double)r->prompt_max * in + (double)r->res_out * out) / 1e6;
	if (local && key->budget > 0 && ks->spend + ks->reserved + res > key->budget) {
		char when[64];
		lg_acct_resets(key->period, wall, when, sizeof when);
		snprintf(msg, mlen,
		         "key '%s' has exhausted its budget of %g USD/%s: %.6f USD spent this period, %.6f USD "
		         "held by requests in flight, this request may cost up to %.6f USD; the budget resets at %s",
		         key->name, key->budget, lg_period_names[key->period], ks->spend, ks->reserved, res, when);
		return 402;
	}
	ks->inflight++;
	if (key->rpm && local) ks->rpm_tok -= 1;
	ks->reserved += res;
	r->reserved = res;
	r->ks = ks;
	return 0;
}

/* --- the ledger: spend that survives restarts and crashes --------------- */

/* Records are text lines ending in their CRC-32:
 *   c1 <wall ms> <key> <usd> <request id> <crc>     a settled charge
 *   s1 <key> <period> <period id> <usd in period> <usd total> <crc>
 * appended with write() at the end of every loop iteration (so a crash of
 * the process loses nothing written) and fdatasync'ed at most once a second
 * (a power cut loses at most the last second). A torn last line fails its
 * CRC and is dropped on replay. Compaction rewrites the file as one s1 line
 * per key into a temporary file, fsyncs it and renames it over the ledger,
 * so a charge is either in a snapshot or in a record, never both. */
static void lg_acct_line(struct lg_buf *b, const char *fmt, ...) LG_PRINTF(2, 3);
static void lg_acct_line(struct lg_buf *b, const char *fmt, ...)
{
	va_list ap;
	size_t st = b->len;
	va_start(ap, fmt);
	lg_buf_vprintf(b, fmt, ap);
	va_end(ap);
	if (!b->err) lg_buf_printf(b, " %08x\n", (unsigned)lg_crc32(0, b->p + st, b->len - st));
}

static LG_COLD void lg_acct_snapshot(struct lg_acct *a, struct lg_buf *b)
{
	struct lg_kstate *k;
	for (k = a->keys; k; k = k->next)
		lg_acct_line(b, "s1 %s %d %lld %.10g %.10g", k->name, k->period, (long long)k->period_id, k->spend,
		             k->total);
}

/* Rewrites the ledger as a snapshot (temporary file, fsync, rename). */
static LG_COLD int lg_acct_compact(struct llmgw *gw)
{
	struct lg_acct *a = gw->acct;
	char tmp[1100];
	struct lg_buf b;
	int fd, ok;
	snprintf(tmp, sizeof tmp, "%s.tmp", a->lpath);
	lg_buf_init(&b, 0);
	lg_acct_snapshot(a, &b);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ok = fd >= 0 && !b.err && (b.len == 0 || write(fd, b.p, b.len) == (ssize_t)b.len) && fsync(fd) == 0;
	if (fd >= 0) close(fd);
	ok = ok && rename(tmp, a->lpath) == 0;
	if (ok) {
		char dir[1100], *sl;
		int dfd;
		snprintf(dir, sizeof dir, "%s", a->lpath);
		if ((sl = strrchr(dir, '/')) != NULL) *sl = 0;
		if ((dfd = open(dir, O_RDONLY | O_CLOEXEC)) >= 0) { /* the rename itself must survive */
			fsync(dfd);
			close(dfd);
		}
		if (a->lfd >= 0) close(a->lfd);
		a->lfd = open(a->lpath, O_WRONLY | O_APPEND | O_CLOEXEC);
		a->lsize = b.len;
	} else {
		LG_LOG(gw, LG_LOG_ERROR, "ledger %s: compaction failed: %s", a->lpath, strerror(errno));
		unlink(tmp);
	}
	lg_buf_free(&b);
	return ok ? 0 : -1;
}

/* Replays the ledger into the key states, then compacts it. */
static LG_COLD int lg_acct_ledger_open(struct llmgw *gw, const char *dir, char *err, size_t errlen)
{
	struct lg_acct *a = lg_acct_of(gw);
	char path[1024], *text;
	size_t len = 0, pos = 0;
	int e = 0, i, lines = 0, bad = 0;
	if (!a) return -1;
	snprintf(path, sizeof path, "%s/ledger", dir);
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		snprintf(err, errlen, "state_dir %s: %s", dir, strerror(errno));
		return -1;
	}
	free(a->lpath);
	a->lpath = (char *)malloc(strlen(path) + 1);
	if (!a->lpath) return -1;
	strcpy(a->lpath, path);
	/* the keys of the configuration first, so records land in the right period */
	for (i = 0; i < gw->cfg->nkeys; i++) {
		struct lg_kstate *ks = lg_acct_kstate(gw, gw->cfg->keys[i]->name);
		if (ks) lg_acct_roll(ks, gw->cfg->keys[i], lg_wall_ms());
	}
	{ /* one gateway per state_dir: a restart waits for the old one to drain */
		char lpath[1100];
		struct flock fl;
		int lfd, tries;
		snprintf(lpath, sizeof lpath, "%s/lock", dir);
		lfd = open(lpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		memset(&fl, 0, sizeof fl);
		fl.l_type = F_WRLCK;
		fl.l_whence = SEEK_SET;
		for (tries = 0; lfd >= 0 && fcntl(lfd, F_SETLK, &fl) < 0; tries++) {
			if (tries == 0) LG_LOG(gw, LG_LOG_WARN, "state_dir %s is locked by another llmgw: waiting", dir);
			if (tries >= 600) {
				snprintf(err, errlen, "state_dir %s is in use by another llmgw (waited 60 s)", dir);
				close(lfd);
				return -1;
			}
			poll(NULL, 0, 100);
		}
		if (lfd < 0) {
			snprintf(err, errlen, "state_dir %s: cannot create the lock file: %s", dir, strerror(errno));
			return -1;
		}
		a->lockfd = lfd;
	}
	text = lg_read_file(path, 1u << 30, &len, &e);
	if (!text && e != ENOENT) {
		snprintf(err, errlen, "state_dir: cannot read %s: %s", path, strerror(e));
		return -1;
	}
	while (text && pos < len) {
		char *nl = memchr(text + pos, '\n', len - pos), *line = text + pos, name[64], id[64];
		unsigned crc = 0;
		long long t, pid;
		double usd, tot;
		int per, n = 0;
		size_t ll;
		struct lg_kstate *ks;
		if (!nl) { /* torn last record */
			bad++;
			break;
		}
		*nl = 0;
		ll = (size_t)(nl - line);
		pos += ll + 1;
		if (ll < 10 || sscanf(line + ll - 8, "%8x", &crc) != 1 || lg_crc32(0, line, ll - 9) != crc) {
			bad++;
			continue;
		}
		line[ll - 9] = 0;
		if (sscanf(line, "c1 %lld %63s %lf %63s%n", &t, name, &usd, id, &n) == 4 && n) {
			if (!(ks = lg_acct_kstate(gw, name))) continue;
			ks->total += usd;
			if (ks->period >= 0) {
				int64_t reset;
				if (lg_acct_period(ks->period, t, &reset) == ks->period_id) ks->spend += usd;
			}
			lines++;
		} else if (sscanf(line, "s1 %63s %d %lld %lf %lf%n", name, &per, &pid, &usd, &tot, &n) == 5 && n) {
			if (!(ks = lg_acct_kstate(gw, name))) continue;
			ks->total = tot;
			if (per == ks->period && pid == ks->period_id) ks->spend = usd;
			lines++;
		} else {
			bad++;
		}
	}
	free(text);
	if (bad) LG_LOG(gw, LG_LOG_WARN, "ledger %s: %d damaged or torn record(s) ignored", path, bad);
	if (lines) LG_LOG(gw, LG_LOG_INFO, "ledger %s: replayed %d records", path, lines);
	if (lg_acct_compact(gw) < 0 || a->lfd < 0) {
		snprintf(err, errlen, "state_dir: cannot write %s: %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

static LG_COLD void lg_acct_sync(struct llmgw *gw, struct lg_timer *t)
{
	struct lg_acct *a = gw->acct;
	int due;
	LG_UNUSED(t);
	lg_lock(gw);
	due = a && a->lfd >= 0 && a->unsynced;
	if (due) a->unsynced = 0;
	lg_unlock(gw);
	if (due) fdatasync(a->lfd);
}

/* --- settling, metrics, recent requests --------------------------------- */

static struct lg_series *lg_acct_series(struct llmgw *gw, int metric, const char *labels)
{
	struct lg_acct *a = lg_acct_of(gw);
	uint32_t h = 2166136261u ^ (uint32_t)metric; /* FNV-1a: cheap, and enough for a table */
	const unsigned char *q;
	unsigned i;
	for (q = (const unsigned char *)labels; *q; q++) h = (h ^ *q) * 16777619u;
	if (!a) return NULL;
	if (a->nser * 2 >= a->capser) { /* grow and rehash */
		unsigned cap = a->capser ? a->capser * 2 : 64, k;
		struct lg_series *ns = (struct lg_series *)calloc(cap, sizeof *ns);
		if (!ns) return NULL;
		for (k = 0; k < a->capser; k++)
			if (a->ser[k].used) {
				unsigned j = a->ser[k].hash & (cap - 1);
				while (ns[j].used) j = (j + 1) & (cap - 1);
				ns[j] = a->ser[k];
			}
		free(a->ser);
		a->ser = ns;
		a->capser = cap;
		memset(a->sc, 0, sizeof a->sc); /* the indices moved */
	}
	for (i = h & (a->capser - 1); a->ser[i].used; i = (i + 1) & (a->capser - 1))
		if (a->ser[i].hash == h && a->ser[i].metric == metric && strcmp(a->ser[i].labels, labels) == 0)
			return &a->ser[i];
	a->ser[i].used = 1;
	a->ser[i].hash = h;
	a->ser[i].metric = metric;
	snprintf(a->ser[i].labels, sizeof a->ser[i].labels, "%s", labels);
	a->nser++;
	return &a->ser[i];
}

static void lg_acct_observe(struct lg_series *s, double secs)
{
	int i;
	if (!s) return;
	for (i = 0; i < LG_HBUCKETS; i++)
		if (secs <= lg_hist_le[i]) s->b[i]++;
	s->sum += secs;
	s->count++;
}

/* A label value as Prometheus wants it: backslash, quote and newline escaped. */
static LG_COLD void lg_acct_label(char *out, size_t n, const char *v)
{
	size_t o = 0;
	if (v && strlen(v) * 2 + 1 >= n) { /* cut on a character boundary: labels stay UTF-8 */
		size_t cut = n / 2 - 1;
		while (cut && ((unsigned char)v[cut] & 0xC0) == 0x80) cut--;
		for (; *v && o + 3 < n && cut; v++, cut--) {
			if (*v == '\\' || *v == '"') out[o++] = '\\';
			if (*v == '\n') {
				out[o++] = '\\';
				out[o++] = 'n';
				continue;
			}
			out[o++] = *v;
		}
		out[o] = 0;
		return;
	}
	for (; v && *v && o + 3 < n; v++) {
		if (*v == '\\' || *v == '"') out[o++] = '\\';
		if (*v == '\n') {
			out[o++] = '\\';
			out[o++] = 'n';
			continue;
		}
		out[o++] = *v;
	}
	out[o] = 0;
}

/* Label sets without printf: k1="v1",k2="v2",... (values already escaped). */
static void lg_lbl(char *out, size_t n, const char *k1, const char *v1, const char *k2, const char *v2,
                   const char *k3, const char *v3)
{
	const char *kv[6];
	size_t o = 0;
	int i;
	kv[0] = k1, kv[1] = v1, kv[2] = k2, kv[3] = v2, kv[4] = k3, kv[5] = v3;
	out[0] = 0;
	for (i = 0; i < 6 && kv[i]; i += 2) {
		if (i && o + 1 < n) out[o++] = ',';
		o += lg_cpy(out + o, n - o, kv[i]);
		o += lg_cpy(out + o, n - o, "=\"");
		o += lg_cpy(out + o, n - o, kv[i + 1]);
		o += lg_cpy(out + o, n - o, "\"");
	}
}

/* The labels of a settled request, escaped when a series is first made. */
struct lg_lblctx {
	struct lg_req *r;
	int ready;
	char model[96], prov[64], key[64];
};

enum { LG_TOK_PROMPT, LG_TOK_COMPLETION, LG_TOK_CACHED };

/* The series of metric for request L->r: x is the status (requests,
 * attempts) or the token type; t is the attempt's provider name for
 * attempts. */
static struct lg_series *lg_acct_rser(struct lg_lblctx *L, int metric, int x, const char *attprov)
{
	static const char tok[][11] = {"prompt", "completion", "cached"};
	struct lg_req *r = L->r;
	struct lg_acct *a = r->gw->acct;
	struct lg_series *s;
	struct lg_scent *e = NULL;
	char lb[224], st[16], pl[64];
	const void *t = metric == LG_M_ATTEMPTS ? (const void *)attprov : r->served ? (const void *)r->served->t : NULL;
	const void *k = metric == LG_M_TOKENS || metric == LG_M_COST ? (const void *)r->key : NULL;
	if (t || !r->served) { /* identities that fix the labels */
		uintptr_t h = (uintptr_t)t * 31u + (uintptr_t)k * 17u + (uintptr_t)(metric * 7 + x * 131) + r->cfg->gen;
		h ^= h >> 9;
		h ^= h >> 17;
		e = &a->sc[h & (LG_SCACHE - 1)];
		if (e->gen == r->cfg->gen && e->t == t && e->k == k && e->metric == metric && e->x == x)
			return &a->ser[e->idx];
	}
	if (!L->ready) {
		/* a name no model claims is not a label: clients could mint series without end */
		lg_acct_label(L->model, sizeof L->model, r->served ? r->served->model : "(none)");
		lg_acct_label(L->prov, sizeof L->prov, r->served ? r->served->prov->name : "");
		lg_acct_label(L->key, sizeof L->key, r->key ? r->key->name : "");
		L->ready = 1;
	}
	lg_itoa(st, x);
	switch (metric) {
	case LG_M_REQUESTS: lg_lbl(lb, sizeof lb, "model", L->model, "provider", L->prov, "status", st); break;
	case LG_M_TOKENS: lg_lbl(lb, sizeof lb, "key", L->key, "model", L->model, "type", tok[x]); break;
	case LG_M_COST: lg_lbl(lb, sizeof lb, "key", L->key, "model", L->model, NULL, NULL); break;
	case LG_M_ATTEMPTS:
		lg_acct_label(pl, sizeof pl, attprov);
		lg_lbl(lb, sizeof lb, "provider", pl, "status", st, NULL, NULL);
		break;
	default: lg_lbl(lb, sizeof lb, "model", L->model, NULL, NULL, NULL, NULL); break;
	}
	s = lg_acct_series(r->gw, metric, lb);
	if (s && e) { /* lg_acct_series may have rehashed: e is still a slot of the same array */
		e->gen = r->cfg->gen;
		e->t = t;
		e->k = k;
		e->metric = metric;
		e->x = x;
		e->idx = (unsigned)(s - a->ser);
	}
	return s;
}

static void lg_acct_settle_locked(struct lg_req *r);

/* A stream that ended without the provider's final count (the client went
 * away, the upstream broke off, or it never sends usage) is charged what
 * llmgw counted: the prompt as estimated for the reservation (or as the
 * provider reported it at the start), the completion from the events
 * forwarded - never more than was reserved. The access log and
 * /v1/generation say the figures are estimated. */
static void lg_acct_counted(struct lg_req *r)
{
	struct lg_usage *u = &r->usage;
	int64_t out = r->res_out > 0 ? LG_MIN(r->est_out, r->res_out) : r->est_out;
	if (!r->stream || !r->sent_head || !r->served) return;
	if (u->seen && (r->stream_done || r->saw_finish)) return; /* the provider's own count */
	if (u->seen && out <= u->completion) return;
	if (!u->seen) u->prompt = r->prompt_est;
	u->completion = LG_MAX(u->completion, out);
	u->seen = u->estimated = 1;
	u->cost = lg_acct_cost(r->served->t, u);
}

static void lg_acct_ledger_out(struct llmgw *gw);

/* Charges the key what the request cost and has not been charged yet; the
 * ledger line is queued, or with now written at once. */
static void lg_acct_charge_locked(struct lg_req *r, struct lg_acct *a, int now)
{
	struct lg_kstate *ks = r->ks;
	double d = r->usage.cost - r->charged;
	if (!ks || !(d > 0)) return;
	if (r->key) lg_acct_roll(ks, r->key, lg_wall_ms());
	ks->spend += d;
	ks->total += d;
	r->charged = r->usage.cost;
	if (a->lfd < 0) return;
	lg_acct_line(&a->lbuf, "c1 %lld %s %.10g %s", (long long)lg_wall_ms(), ks->name, d, r->id);
	if (now) lg_acct_ledger_out(r->gw);
}

/* Before the bytes that tell the client its cost leave: the charge is in
 * the ledger file, so a kill -9 right after cannot lose it. */
static void lg_acct_charge(struct lg_req *r)
{
	struct lg_acct *a;
	/* without a ledger the settle right after charges it (same iteration, same lock) */
	if (!r->ks || !(r->usage.cost > r->charged) || !r->cfg->state_dir || !*r->cfg->state_dir) return;
	lg_lock(r->gw);
	if ((a = lg_acct_of(r->gw))) lg_acct_charge_locked(r, a, 1);
	lg_unlock(r->gw);
}

/* The request ended: settle its reservation, charge the ledger, count it
 * (under the loops' lock: key state, metrics and the ring are shared). */
static void lg_acct_settle(struct lg_req *r)
{
	lg_lock(r->gw);
	lg_acct_settle_locked(r);
	lg_unlock(r->gw);
}

static void lg_acct_settle_locked(struct lg_req *r)
{
	struct llmgw *gw = r->gw;
	struct lg_acct *a = lg_acct_of(gw);
	struct lg_lblctx L;
	struct lg_series *s;
	const char *pm = r->served ? r->served->model : r->model_req;
	double secs = (double)(gw->now - r->t0) / 1000.0;
	int i;
	if (r->aff_hit && gw->rs) gw->rs->aff_hits++; /* routed by prompt affinity */
	if (!a) return;
	if (r->ks) {
		struct lg_kstate *ks = r->ks;
		ks->inflight--;
		ks->reserved -= r->reserved;
		if (ks->reserved < 1e-12) ks->reserved = 0;
		if (r->key) {
			lg_acct_roll(ks, r->key, lg_wall_ms());
			if (r->key->tpm) ks->tpm_tok -= (double)(r->usage.prompt + r->usage.completion);
		}
		lg_acct_charge_locked(r, a, 0);
		r->ks = NULL;
	}
	if (!LG_EP_ASKS_MODEL(r->ep)) return; /* model requests only */
	L.r = r;
	L.ready = 0;
	if ((s = lg_acct_rser(&L, LG_M_REQUESTS, r->status, NULL))) s->v += 1;
	lg_acct_observe(lg_acct_rser(&L, LG_M_DURATION, 0, NULL), secs);
	if (r->t_first) lg_acct_observe(lg_acct_rser(&L, LG_M_TTFT, 0, NULL), (double)(r->t_first - r->t0) / 1000.0);
	if (r->usage.seen) {
		if ((s = lg_acct_rser(&L, LG_M_TOKENS, LG_TOK_PROMPT, NULL))) s->v += (double)r->usage.prompt;
		if ((s = lg_acct_rser(&L, LG_M_TOKENS, LG_TOK_COMPLETION, NULL))) s->v += (double)r->usage.completion;
		if ((s = lg_acct_rser(&L, LG_M_TOKENS, LG_TOK_CACHED, NULL))) s->v += (double)r->usage.cached;
		if ((s = lg_acct_rser(&L, LG_M_COST, 0, NULL))) s->v += r->usage.cost;
	}
	for (i = 0; i < r->natt; i++)
		if ((s = lg_acct_rser(&L, LG_M_ATTEMPTS, r->att[i].status, r->att[i].prov))) s->v += 1;
	/* the ring of recent requests */
	if (LG_EP_ASKS_MODEL(r->ep)) {
		struct lg_gen *g = &a->ring[r->seq % LG_RING];
		memset(g, 0, sizeof *g);
		g->seq = r->seq;
		lg_cpy(g->id, sizeof g->id, r->id);
		lg_cpy(g->key, sizeof g->key, r->key ? r->key->name : "");
		lg_cpy(g->model, sizeof g->model, pm);
		lg_cpy(g->provider, sizeof g->provider, r->served ? r->served->prov->name : "");
		lg_cpy(g->upstream, sizeof g->upstream, r->served ? r->served->upstream : "");
		g->status = r->status;
		g->natt = r->natt;
		g->stream = r->stream;
		for (i = 0; i < r->natt && i < 4; i++) {
			lg_cpy(g->att[i].prov, sizeof g->att[i].prov, r->att[i].prov);
			g->att[i].status = r->att[i].status;
			g->att[i].ms = r->att[i].ms;
		}
		g->ms = gw->now - r->t0;
		g->ttft = r->t_first ? r->t_first - r->t0 : -1;
		g->prompt = r->usage.prompt;
		g->completion = r->usage.completion;
		g->cached = r->usage.cached;
		g->cost = r->usage.cost;
		g->estimated = r->usage.estimated;
		g->created = r->wall0;
	}
}

/* The answer of GET /v1/generation for one record (also what the shared
 * store keeps of it, [store] records). */
static void lg_acct_gen_json(struct lg_buf *b, const struct lg_gen *g)
{
	int i;
	lg_buf_addz(b, "{\"data\":{\"id\":");
	lg_json_wz(b, g->id);
	lg_buf_addz(b, ",\"model\":");
	lg_json_wz(b, g->model);
	lg_buf_addz(b, ",\"provider\":");
	lg_json_wz(b, g->provider);
	lg_buf_addz(b, ",\"upstream_model\":");
	lg_json_wz(b, g->upstream);
	lg_buf_printf(b, ",\"status\":%d,\"stream\":%s,\"attempts\":[", g->status, g->stream ? "true" : "false");
	for (i = 0; i < g->natt && i < 4; i++) {
		lg_buf_addz(b, i ? ",{\"provider\":" : "{\"provider\":");
		lg_json_wz(b, g->att[i].prov);
		lg_buf_printf(b, ",\"status\":%d,\"ms\":%lld}", g->att[i].status, (long long)g->att[i].ms);
	}
	lg_buf_printf(b, "],\"num_attempts\":%d,\"latency_ms\":%lld,\"ttft_ms\":", g->natt, (long long)g->ms);
	if (g->ttft >= 0)
		lg_buf_printf(b, "%lld", (long long)g->ttft);
	else
		lg_buf_addz(b, "null");
	lg_buf_printf(b, ",\"prompt_tokens\":%lld,\"completion_tokens\":%lld,\"cached_tokens\":%lld",
	              (long long)g->prompt, (long long)g->completion, (long long)g->cached);
	lg_buf_addz(b, ",\"cost\":");
	lg_json_wnum(b, g->cost);
	lg_buf_addz(b, ",\"total_cost\":");
	lg_json_wnum(b, g->cost);
	if (g->estimated) lg_buf_addz(b, ",\"usage_estimated\":true");
	lg_buf_printf(b, ",\"created_at\":%lld}}\n", (long long)(g->created / 1000));
}

/* One JSON line per request in the access log; written in batches at the
 * end of each loop iteration. Prompts and completions are never logged. */
static void lg_acct_log(struct lg_req *r)
{
	struct llmgw *gw = r->gw;
	struct lg_buf *b = &gw->logbuf;
	char ts[96];
	time_t t = (time_t)(r->wall0 / 1000);
	struct tm tm;
	int i;
	if (gw->logfd < 0) return;
	gmtime_r(&t, &tm);
	snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
	         tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(r->wall0 % 1000));
	lg_buf_printf(b, "{\"ts\":\"%s\",\"id\":\"%s\",\"key\":", ts, r->id);
	if (r->key)
		lg_json_wz(b, r->key->name);
	else
		lg_buf_addz(b, "null");
	lg_buf_addz(b, ",\"user\":");
	if (r->user)
		lg_json_wz(b, r->user);
	else
		lg_buf_addz(b, "null");
	lg_buf_addz(b, ",\"model\":");
	if (r->served)
		lg_json_wz(b, r->served->model);
	else if (r->model_req)
		lg_json_wz(b, r->model_req);
	else
		lg_buf_addz(b, "null");
	lg_buf_addz(b, ",\"provider\":");
	if (r->served)
		lg_json_wz(b, r->served->prov->name);
	else
		lg_buf_addz(b, "null");
	lg_buf_addz(b, ",\"upstream_model\":");
	if (r->served)
		lg_json_wz(b, r->served->upstream);
	else
		lg_buf_addz(b, "null");
	lg_buf_printf(b, ",\"status\":%d,\"attempts\":[", r->status);
	for (i = 0; i < r->natt; i++) {
		lg_buf_printf(b, "%s{\"provider\":", i ? "," : "");
		lg_json_wz(b, r->att[i].prov);
		lg_buf_printf(b, ",\"status\":%d,\"ms\":%lld,\"error\":", r->att[i].status,
		              (long long)r->att[i].ms);
		if (r->att[i].err[0])
			lg_json_wz(b, r->att[i].err);
		else
			lg_buf_addz(b, "null");
		lg_buf_addc(b, '}');
	}
	lg_buf_printf(b, "],\"stream\":%s,\"ms\":%lld,\"ttft_ms\":", r->stream ? "true" : "false",
	              (long long)(gw->now - r->t0));
	if (r->t_first)
		lg_buf_printf(b, "%lld", (long long)(r->t_first - r->t0));
	else
		lg_buf_addz(b, "null");
	lg_buf_printf(b, ",\"prompt_tokens\":%lld,\"completion_tokens\":%lld,\"cached_tokens\":%lld,\"cost\":",
	              (long long)r->usage.prompt, (long long)r->usage.completion, (long long)r->usage.cached);
	lg_json_wnum(b, r->usage.cost);
	if (r->usage.estimated) lg_buf_addz(b, ",\"usage_estimated\":true");
	lg_buf_printf(b, ",\"bytes_in\":%zu,\"bytes_out\":%zu", r->bytes_in, r->bytes_out);
	if (r->status >= 400 && r->errmsg[0]) {
		lg_buf_addz(b, ",\"error\":");
		lg_json_wz(b, r->errmsg);
	}
	lg_buf_addz(b, "}\n");
}

static void lg_acct_flush(struct llmgw *gw)
{
	size_t n = lg_buf_used(&gw->logbuf);
	if (gw->logfd >= 0 && n) {
		const char *p = lg_buf_data(&gw->logbuf);
		while (n) {
			size_t k = n;
			ssize_t w;
			if (gw->sh && k > LG_PIPE_BUF) { /* loops share the log: whole lines a pipe writes at once */
				size_t e = LG_PIPE_BUF;
				const char *nl;
				while (e && p[e - 1] != '\n') e--;
				if (e) /* else a line longer than that goes alone */
					k = e;
				else if ((nl = (const char *)memchr(p, '\n', n)) != NULL)
					k = (size_t)(nl - p) + 1;
			}
			w = write(gw->logfd, p, k);
			if (w <= 0) {
				if (w < 0 && errno == EINTR) continue;
				break; /* a full disk must not stop the gateway */
			}
			p += w, n -= (size_t)w;
		}
	}
	gw->logbuf.off = gw->logbuf.len = 0;
	lg_buf_shrink(&gw->logbuf);
	if (!gw->acct || (gw->acct->lfd < 0 && !lg_buf_used(&gw->acct->lbuf))) return;
	lg_lock(gw);
	if (gw->acct->unsynced && !gw->child && gw->acct->sync_tm.hidx < 0) /* other loops wrote */
		lg_timer_set(gw, &gw->acct->sync_tm, 1000);
	lg_acct_ledger_out(gw);
	lg_unlock(gw);
}

/* Appends what is queued for the ledger to its file (under the lock). */
static void lg_acct_ledger_out(struct llmgw *gw)
{
	if (lg_buf_used(&gw->acct->lbuf)) {
		struct lg_acct *a = gw->acct;
		ssize_t w = a->lfd >= 0 ? write(a->lfd, lg_buf_data(&a->lbuf), lg_buf_used(&a->lbuf)) : -1;
		if (w != (ssize_t)lg_buf_used(&a->lbuf))
			LG_LOG(gw, LG_LOG_ERROR, "ledger %s: write failed: %s (spend is kept in memory)",
			       a->lpath ? a->lpath : "", strerror(errno));
		else
			a->lsize += (size_t)w;
		a->lbuf.off = a->lbuf.len = 0;
		if (!a->unsynced) { /* fdatasync at most once a second, by the first loop */
			a->unsynced = 1;
			a->sync_tm.fn = lg_acct_sync;
			if (!gw->child) lg_timer_set(gw, &a->sync_tm, 1000);
		}
		if (a->lsize > (8u << 20)) lg_acct_compact(gw);
	}
}

/* --- 13f. the in-process store ----------------------------------------- */

/* admit: the plan and the key's limits in one step under the loops' lock
 * (router health and key state are shared by the loops); answers at once. */
static void lg_st_local_admit(struct lg_req *r)
{
	char msg[1024];
	int retry = 0, status;
	lg_lock(r->gw);
	if (!(status = lg_route_plan(r, msg, sizeof msg))) status = lg_acct_admit(r, msg, sizeof msg, &retry, 1);
	lg_unlock(r->gw);
	lg_st_admitted(r, status, retry, msg);
}

/* take: the target's breaker and its provider's concurrency, checked and
 * taken in one step (other loops use them too); this attempt may be the
 * breaker's probe. */
static int lg_st_local_take(struct lg_req *r, const struct lg_cand *cd)
{
	char buf[160];
	lg_lock(r->gw);
	if (lg_route_breaker(cd->h, r->gw->now, buf, sizeof buf) ||
	    (cd->prov->max_concurrency && cd->ph && cd->ph->inflight >= cd->prov->max_concurrency)) {
		lg_unlock(r->gw);
		return -1;
	}
	if (cd->ph) cd->ph->inflight++;
	if (cd->h && cd->h->state != LG_BRK_CLOSED) { /* this attempt is the probe */
		struct lg_health *h = cd->h;
		h->state = LG_BRK_HALF;
		h->probing = 1;
	}
	lg_unlock(r->gw);
	return 0;
}

/* report: the attempt's outcome into its target's health and breaker;
 * the provider's concurrency slot back. */
static void lg_st_local_report(struct lg_req *r, const struct lg_cand *cd, int ok)
{
	struct lg_health *h;
	lg_lock(r->gw);
	if (cd->ph && cd->ph->inflight > 0) cd->ph->inflight--;
	if (!(h = cd->h)) {
		lg_unlock(r->gw);
		return;
	}
	h->probing = 0;
	if (ok > 0) {
		int64_t now = r->gw->now, first = r->t_att_first ? r->t_att_first : now;
		double ttft = (double)(first - r->t_att), gen = (double)(now - first) / 1000.0;
		h->ok++;
		h->fails = 0;
		h->state = LG_BRK_CLOSED;
		h->cooldown = 0;
		h->ttft = h->ttft > 0 ? 0.7 * h->ttft + 0.3 * ttft : (ttft > 0 ? ttft : 0.1);
		if (r->usage.completion > 0) {
			double tps = (double)r->usage.completion / (gen > 0.001 ? gen : (ttft > 0 ? ttft / 1000.0 : 0.001));
			h->tps = h->tps > 0 ? 0.7 * h->tps + 0.3 * tps : tps;
		}
	} else if (ok == 0) {
		h->bad++;
		h->fails++;
		if (h->state == LG_BRK_HALF || h->fails >= LG_BREAKER_FAILS) {
			h->cooldown = h->cooldown ? LG_MIN(h->cooldown * 2, (int64_t)300000) : LG_BREAKER_COOL;
			if (h->state != LG_BRK_OPEN)
				LG_LOG(r->gw, LG_LOG_WARN, "target %s: circuit breaker open for %lld s after %d failures", h->id,
				       (long long)(h->cooldown / 1000), h->fails);
			h->state = LG_BRK_OPEN;
			h->open_until = r->gw->now + h->cooldown;
		}
	}
	lg_unlock(r->gw);
}

/* remember: the prompt's target, for ms (prompt-cache affinity). */
static void lg_st_local_remember(struct lg_req *r, const char *target, int64_t ms)
{
	struct lg_rstate *rs = r->gw->rs;
	unsigned slot = r->aff_hash % LG_AFF_SLOTS;
	if (!rs) return;
	lg_lock(r->gw);
	rs->aff[slot].h = r->aff_hash;
	lg_cpy(rs->aff[slot].target, sizeof rs->aff[slot].target, target);
	rs->aff[slot].until = r->gw->now + ms;
	lg_unlock(r->gw);
}

/* view: fn reads the state under the loops' lock. */
static void lg_st_local_view(struct lg_req *r, void (*fn)(struct lg_req *r))
{
	lg_lock(r->gw);
	lg_st_viewed(r, fn);
	lg_unlock(r->gw);
}

static const struct lg_store lg_st_local = {"local", lg_st_local_admit, lg_st_local_take, lg_st_local_report,
                                            lg_st_local_remember, lg_acct_charge, lg_acct_settle, lg_st_local_view,
                                            NULL};

/* --- 13g. the Redis store: RESP client, scripts ------------------------- */

/* lg_st_redis keeps what several gateways must agree on in Redis or
 * Valkey. admit sends one batch, answered in one round trip: the shared
 * affinity entry of the prompt (when this process has none), one script
 * for the key's rpm (a sliding log), tpm (a sliding counter over 5 s
 * buckets) and max_concurrency (leases with an expiry, renewed by each
 * loop for its requests in flight, released at settle), one script that
 * checks every budget period of the key and reserves the worst case;
 * lg_st_redis_join decides once every reply is in and gives back what a
 * refused request took. settle puts the real cost in the reservation's
 * place, ends the lease, counts the tokens and writes the request's
 * record. report runs the breaker's rules on the target's shared hash;
 * the first loop reads the hashes of its targets once a second into its
 * own health entries (the plan never waits for the store), taking the one
 * probe token of an open breaker whose cool-down is over. remember writes
 * the affinity entry; view reads /v1/key's fleet-wide figures and records
 * of other instances. The ledger, metrics and a provider's concurrency
 * stay each instance's own. The store's epoch (below, before the budget
 * calls) brings the fleet's spend back after the store lost its data, and
 * the charges of an outage after it; on_error = local shares out what the
 * store last said was left. rediss:// is TLS through section 7, verified
 * like an https upstream.
 *
 * The client: each event loop has one connection (gw->redis), made
 * without blocking, with AUTH and SELECT written first. Commands are RESP
 * arrays appended to the connection's output and written once per loop
 * iteration (lg_redis_flush), so the commands of every request of an
 * iteration share one write and their replies come back in order: a FIFO
 * of callbacks (q) matches them. Scripts are called by their SHA-1
 * (EVALSHA); NOSCRIPT (a SCRIPT FLUSH, a restarted store) loads the script
 * and sends the command once more. A command unanswered after timeout
 * fails, with every command behind it, and the connection is made again
 * (a FIFO cannot skip a reply) after a capped exponential backoff; while
 * it is down, commands fail at once, so a request waits for the store at
 * most timeout. A store outage is logged once, when it starts, and once
 * when it ends, with how many calls failed meanwhile.
 *
 * Keys (prefix first):
 *   b:<key>:<period>:<period id>  hash: spend, held (USD) and r:<request
 *                                 id> = its reservation; expires an hour
 *                                 after its period (never for total)
 *   inst:<instance>               the heartbeat, SET ... EX 3 every second
 *   insts                         sorted set: instance -> last heartbeat ms
 *   rpm:<key>                     sorted set: request id -> when (the last minute's)
 *   tpm:<key>                     hash: 5 s bucket number -> tokens settled in it
 *   conc:<key>                    sorted set: request id -> when its lease expires
 *   h:<provider>/<model>          hash: state, fails, cool, until, ttft, tps; and
 *   h:<provider>/<model>:probe    the instance holding the probe (PX 10 s)
 *   a:<prompt hash>               the target the prompt was last served by (its affinity)
 *   g:<request id>                "<key>\n<the /v1/generation answer>", for [store] records
 *   epoch                         hash: id = the store's epoch (random),
 *                                 i:<instance> = joined it (its own spend
 *                                 added back), o:<instance> = the number of
 *                                 its last reconciliation
 *
 * Memory: the connection's buffers, bounded by LLMGW_STORE_MAX_REPLY, and
 * a queue entry (~48 bytes) per command waiting for its reply. */

/* A reply, as lg_redis_parse hands it over: values in preorder, arrays
 * followed by their elements; next is the index after the value and all
 * it holds. p points into the parsed buffer. */
enum { LG_RV_STR = 1, LG_RV_ERR, LG_RV_INT, LG_RV_BULK, LG_RV_NIL, LG_RV_ARR };
struct lg_rv {
	int type, n, next; /* n: an array's elements */
	int64_t i;         /* an integer */
	const char *p;     /* a string, bulk or error: len bytes, not NUL-terminated */
	size_t len;
};
#define LG_RV_MAX 64  /* values in one reply: llmgw's scripts answer with a few */
#define LG_RV_DEPTH 8 /* nested arrays */

static int lg_redis_int(const char *p, size_t n, int64_t *out)
{
	size_t i = 0;
	int neg = 0;
	uint64_t v = 0;
	if (n && p[0] == '-') neg = 1, i = 1;
	if (i == n || n - i > 18) return -1;
	for (; i < n; i++) {
		if (p[i] < '0' || p[i] > '9') return -1;
		v = v * 10 + (uint64_t)(p[i] - '0');
	}
	*out = neg ? -(int64_t)v : (int64_t)v;
	return 0;
}

/* Parses the RESP2 reply at the start of buf[0, len) into v (at most maxv
 * values). Returns the bytes it takes, 0 when it is not all there yet
 * (call again with more: nothing is kept between calls), or -1 when the
 * bytes are not RESP2 or go past a limit (a bulk string or status line
 * longer than maxbulk, more than maxv values, arrays nested deeper than
 * LG_RV_DEPTH): the connection cannot be trusted after that. Never
 * allocates; the strings of v point into buf. */
static long lg_redis_parse(const char *buf, size_t len, struct lg_rv *v, int maxv, int *nv, size_t maxbulk)
{
	size_t pos = 0;
	int n = 0, depth = 0, i;
	int64_t rem[LG_RV_DEPTH + 1];
	rem[0] = 1;
	*nv = 0;
	for (;;) {
		const char *cr;
		size_t ll;
		int64_t x;
		struct lg_rv *e;
		while (depth > 0 && rem[depth] == 0) depth--;
		if (rem[depth] == 0) break;
		rem[depth]--;
		if (pos >= len) return 0;
		cr = (const char *)memchr(buf + pos, '\r', LG_MIN(len - pos, maxbulk + 32));
		if (!cr) return len - pos > maxbulk + 32 ? -1 : 0;
		ll = (size_t)(cr - buf) - pos; /* the line, its type byte included */
		if ((size_t)(cr - buf) + 1 >= len) return 0;
		if (cr[1] != '\n' || ll == 0) return -1;
		if (n == maxv) return -1;
		e = &v[n++];
		memset(e, 0, sizeof *e);
		switch (buf[pos]) {
		case '+':
		case '-':
			e->type = buf[pos] == '+' ? LG_RV_STR : LG_RV_ERR;
			e->p = buf + pos + 1;
			e->len = ll - 1;
			pos += ll + 2;
			break;
		case ':':
			if (lg_redis_int(buf + pos + 1, ll - 1, &e->i)) return -1;
			e->type = LG_RV_INT;
			pos += ll + 2;
			break;
		case '$':
			if (lg_redis_int(buf + pos + 1, ll - 1, &x) || x < -1 || x > (int64_t)maxbulk) return -1;
			pos += ll + 2;
			if (x == -1) {
				e->type = LG_RV_NIL;
				break;
			}
			if (len - pos < (size_t)x + 2) return 0;
			if (buf[pos + (size_t)x] != '\r' || buf[pos + (size_t)x + 1] != '\n') return -1;
			e->type = LG_RV_BULK;
			e->p = buf + pos;
			e->len = (size_t)x;
			pos += (size_t)x + 2;
			break;
		case '*':
			if (lg_redis_int(buf + pos + 1, ll - 1, &x) || x < -1 || x > maxv) return -1;
			pos += ll + 2;
			if (x == -1) {
				e->type = LG_RV_NIL;
				break;
			}
			e->type = LG_RV_ARR;
			e->n = (int)x;
			if (x > 0) {
				if (depth == LG_RV_DEPTH) return -1;
				rem[++depth] = x;
			}
			break;
		default: return -1;
		}
	}
	for (i = n - 1; i >= 0; i--) { /* next: children have higher indices, so from the end */
		int j = i + 1, k;
		if (v[i].type == LG_RV_ARR)
			for (k = 0; k < v[i].n; k++) j = v[j].next;
		v[i].next = j;
	}
	*nv = n;
	return (long)pos;
}

/* RESP arrays of bulk strings: lg_redis_cmd(b, n) and then n arguments. */
static void lg_redis_cmd(struct lg_buf *b, int n) { lg_buf_printf(b, "*%d\r\n", n); }
static void lg_redis_arg(struct lg_buf *b, const char *p, size_t n)
{
	lg_buf_printf(b, "$%zu\r\n", n);
	lg_buf_add(b, p, n);
	lg_buf_add(b, "\r\n", 2);
}
static void lg_redis_argz(struct lg_buf *b, const char *z) { lg_redis_arg(b, z, strlen(z)); }
static void lg_redis_argd(struct lg_buf *b, double d)
{
	char t[40];
	snprintf(t, sizeof t, "%.17g", d);
	lg_redis_argz(b, t);
}
static void lg_redis_argi(struct lg_buf *b, int64_t i)
{
	char t[24];
	snprintf(t, sizeof t, "%lld", (long long)i);
	lg_redis_argz(b, t);
}

/* The scripts: each is one atomic step in the store. */
enum { LG_SCR_ADMIT, LG_SCR_SETTLE, LG_SCR_BEAT, LG_SCR_LIMIT, LG_SCR_LDONE, LG_SCR_LEASE, LG_SCR_KEYINFO,
       LG_SCR_HREPORT, LG_SCR_HREAD, LG_SCR_JOIN, LG_SCR_RELEASE, LG_NSCR };
static const char *const lg_redis_scripts[LG_NSCR] = {
    /* admit: KEYS the budget hashes of the key's periods; ARGV[1] the
     * request id, ARGV[2] its reservation (USD), then for each key its
     * budget and when it expires (ms, 0: never), and last the epoch hash
     * and the instance. Reserves in every one, or in none: {0, which,
     * spend, held}; {2}: this instance has not joined the store's epoch
     * (the store lost its data: the join comes first); {3}: released
     * already (the gateway gave up waiting for this call: see release) */
    "if redis.call('HEXISTS', ARGV[#ARGV - 1], 'i:' .. ARGV[#ARGV]) == 0 then return {2} end\n"
    "if redis.call('HEXISTS', KEYS[1], 'x:' .. ARGV[1]) == 1 then return {3} end\n"
    "local res = tonumber(ARGV[2])\n"
    "for i = 1, #KEYS do\n"
    "  local h = redis.call('HMGET', KEYS[i], 'spend', 'held')\n"
    "  local spend, held = tonumber(h[1]) or 0, tonumber(h[2]) or 0\n"
    "  if held < 1e-12 then held = 0 end\n"
    "  if spend + held + res > tonumber(ARGV[1 + 2 * i]) then\n"
    "    return {0, i, string.format('%.17g', spend), string.format('%.17g', held)}\n"
    "  end\n"
    "end\n"
    "for i = 1, #KEYS do\n"
    "  redis.call('HINCRBYFLOAT', KEYS[i], 'held', ARGV[2])\n"
    "  redis.call('HSET', KEYS[i], 'r:' .. ARGV[1], ARGV[2])\n"
    "  local at = tonumber(ARGV[2 + 2 * i])\n"
    "  if at > 0 then redis.call('PEXPIREAT', KEYS[i], at) end\n"
    "end\n"
    "return {1}\n",
    /* settle: KEYS the budget hashes; ARGV[1] the request id, ARGV[2] its
     * cost (USD), then for each key when it expires, and last the epoch
     * hash and the instance. The reservation goes, the cost comes in its
     * place; 2: nothing done, the instance has not joined the epoch (its
     * join adds the cost back with the rest of its charges) */
    "if redis.call('HEXISTS', ARGV[#ARGV - 1], 'i:' .. ARGV[#ARGV]) == 0 then return 2 end\n"
    "local cost = tonumber(ARGV[2])\n"
    "for i = 1, #KEYS do\n"
    "  local r = redis.call('HGET', KEYS[i], 'r:' .. ARGV[1])\n"
    "  if r then\n"
    "    redis.call('HDEL', KEYS[i], 'r:' .. ARGV[1])\n"
    "    local held = tonumber(redis.call('HINCRBYFLOAT', KEYS[i], 'held', string.format('%.17g', -tonumber(r))))\n"
    "    if held < 1e-12 then redis.call('HSET', KEYS[i], 'held', '0') end\n"
    "  end\n"
    "  if cost > 0 then redis.call('HINCRBYFLOAT', KEYS[i], 'spend', ARGV[2]) end\n"
    "  local at = tonumber(ARGV[2 + i])\n"
    "  if at > 0 then redis.call('PEXPIREAT', KEYS[i], at) end\n"
    "end\n"
    "return 1\n",
    /* heartbeat: KEYS[1] inst:<instance>, KEYS[2] insts; ARGV[1] now (ms),
     * ARGV[2] the instance. Answers how many beat in the last 3 s. */
    "redis.call('SET', KEYS[1], ARGV[1], 'EX', 3)\n"
    "redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[1]) - 3000)\n"
    "return redis.call('ZCARD', KEYS[2])\n",
    /* limits: KEYS[1] rpm:<key> (sorted set: request id -> when, ms: the
     * last minute's requests), KEYS[2] conc:<key> (request id -> when its
     * lease expires), KEYS[3] tpm:<key> (hash: 5 s bucket -> tokens);
     * ARGV id, now, rpm, tpm, max_concurrency, lease (ms). Counts the
     * request and takes its lease, or answers {0, which (1 concurrency,
     * 2 rpm, 3 tpm), count, ms until there is room}. */
    "local id, now = ARGV[1], tonumber(ARGV[2])\n"
    "local rpm, tpm, mc, lease = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])\n"
    "if mc > 0 then\n"
    "  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)\n"
    "  local n = redis.call('ZCARD', KEYS[2])\n"
    "  if n >= mc then return {0, 1, n, 1000} end\n"
    "end\n"
    "if rpm > 0 then\n"
    "  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)\n"
    "  local n = redis.call('ZCARD', KEYS[1])\n"
    "  if n >= rpm then\n"
    "    local o = redis.call('ZRANGE', KEYS[1], n - rpm, n - rpm, 'WITHSCORES')\n"
    "    return {0, 2, n, tonumber(o[2]) + 60000 - now}\n"
    "  end\n"
    "end\n"
    "if tpm > 0 then\n"
    "  local b, h, sum, old = math.floor(now / 5000), redis.call('HGETALL', KEYS[3]), 0, nil\n"
    "  for i = 1, #h, 2 do\n"
    "    local k = tonumber(h[i])\n"
    "    if k <= b - 12 then redis.call('HDEL', KEYS[3], h[i])\n"
    "    else sum = sum + tonumber(h[i + 1]); if not old or k < old then old = k end end\n"
    "  end\n"
    "  if sum >= tpm then return {0, 3, sum, (old + 12) * 5000 - now} end\n"
    "end\n"
    "if mc > 0 then\n"
    "  redis.call('ZADD', KEYS[2], now + lease, id)\n"
    "  redis.call('PEXPIRE', KEYS[2], lease * 2)\n"
    "end\n"
    "if rpm > 0 then\n"
    "  redis.call('ZADD', KEYS[1], now, id)\n"
    "  redis.call('PEXPIRE', KEYS[1], 61000)\n"
    "end\n"
    "return {1}\n",
    /* limits done: KEYS as for limits; ARGV id, now, tokens, undo. The
     * lease goes; the tokens count against tpm; undo (a request the budget
     * refused, or nobody waits for) takes it out of rpm too. */
    "redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "if ARGV[4] == '1' then redis.call('ZREM', KEYS[1], ARGV[1]) end\n"
    "local t = tonumber(ARGV[3])\n"
    "if t > 0 then\n"
    "  redis.call('HINCRBY', KEYS[3], tostring(math.floor(tonumber(ARGV[2]) / 5000)), t)\n"
    "  redis.call('PEXPIRE', KEYS[3], 65000)\n"
    "end\n"
    "return 1\n",
    /* leases: KEYS the conc:<key> sets of this loop's requests in flight,
     * ARGV[1] the new expiry, ARGV[1 + i] the request of KEYS[i]. A lease
     * already gone (released, expired) is not made again. */
    "for i = 1, #KEYS do\n"
    "  redis.call('ZADD', KEYS[i], 'XX', ARGV[1], ARGV[1 + i])\n"
    "  redis.call('PEXPIRE', KEYS[i], ARGV[2 + #KEYS])\n"
    "end\n"
    "return #KEYS\n",
    /* key info: KEYS budget hash, rpm:, conc:, tpm:, insts; ARGV now.
     * {spend, held, requests in the last minute, leases, tokens in the
     * last minute, live instances} */
    "local now = tonumber(ARGV[1])\n"
    "local h = redis.call('HMGET', KEYS[1], 'spend', 'held')\n"
    "local b, t, sum = math.floor(now / 5000), redis.call('HGETALL', KEYS[4]), 0\n"
    "for i = 1, #t, 2 do if tonumber(t[i]) > b - 12 then sum = sum + tonumber(t[i + 1]) end end\n"
    "return {h[1] or '0', h[2] or '0', redis.call('ZCOUNT', KEYS[2], now - 60000, '+inf'),\n"
    "  redis.call('ZCOUNT', KEYS[3], now, '+inf'), sum, redis.call('ZCOUNT', KEYS[5], now - 3000, '+inf')}\n",
    /* health report: KEYS[1] h:<target>; ARGV now, outcome (1 ok, 0
     * failure), ttft (ms), tokens/s (0: none), fails that open, first
     * cool-down (ms). The breaker's state, shared: an answer closes it, a
     * failure of the probe or the fails-th in a row opens it for a
     * cool-down doubled each time up to 5 minutes. */
    "local now, ok = tonumber(ARGV[1]), ARGV[2] == '1'\n"
    "local h = redis.call('HMGET', KEYS[1], 'state', 'fails', 'cool', 'ttft', 'tps')\n"
    "local st, fails, cool = tonumber(h[1]) or 0, tonumber(h[2]) or 0, tonumber(h[3]) or 0\n"
    "if ok then\n"
    "  local ttft, tps = tonumber(ARGV[3]), tonumber(ARGV[4])\n"
    "  local o, p = tonumber(h[4]) or 0, tonumber(h[5]) or 0\n"
    "  if o > 0 then ttft = 0.7 * o + 0.3 * ttft elseif ttft <= 0 then ttft = 0.1 end\n"
    "  if tps > 0 then if p > 0 then tps = 0.7 * p + 0.3 * tps end else tps = p end\n"
    "  redis.call('HSET', KEYS[1], 'state', 0, 'fails', 0, 'cool', 0, 'until', 0, 'ttft', ttft, 'tps', tps)\n"
    "  redis.call('DEL', KEYS[1] .. ':probe')\n"
    "else\n"
    "  fails = fails + 1\n"
    "  redis.call('HSET', KEYS[1], 'fails', fails)\n"
    "  if st ~= 0 or fails >= tonumber(ARGV[5]) then\n"
    "    if cool > 0 then cool = math.min(cool * 2, 300000) else cool = tonumber(ARGV[6]) end\n"
    "    if st == 0 or redis.call('EXISTS', KEYS[1] .. ':probe') == 1 then\n"
    "      redis.call('HSET', KEYS[1], 'state', 1, 'cool', cool, 'until', now + cool)\n"
    "    end\n"
    "    redis.call('DEL', KEYS[1] .. ':probe')\n"
    "  end\n"
    "end\n"
    "redis.call('PEXPIRE', KEYS[1], 86400000)\n"
    "return 1\n",
    /* health read: KEYS the h:<target> hashes this loop uses; ARGV now,
     * the instance, how long a probe may take (ms). One line per key:
     * "state fails until ttft tps probe", probe 1 when this instance holds
     * the one probe of an open breaker whose cool-down is over (SET NX:
     * one instance tries, the others keep skipping the target). */
    "local now, out = tonumber(ARGV[1]), {}\n"
    "for i = 1, #KEYS do\n"
    "  local h = redis.call('HMGET', KEYS[i], 'state', 'fails', 'until', 'ttft', 'tps')\n"
    "  local st, un, pr = tonumber(h[1]) or 0, tonumber(h[3]) or 0, 0\n"
    "  if st ~= 0 and un <= now then\n"
    "    if redis.call('SET', KEYS[i] .. ':probe', ARGV[2], 'NX', 'PX', ARGV[3]) or\n"
    "       redis.call('GET', KEYS[i] .. ':probe') == ARGV[2] then pr = 1 end\n"
    "  end\n"
    "  out[i] = string.format('%d %d %.0f %s %s %d', st, tonumber(h[2]) or 0, un, h[4] or '0', h[5] or '0', pr)\n"
    "end\n"
    "return table.concat(out, '\\n')\n",
    /* join: KEYS[1] the epoch hash, then budget hashes of this instance's
     * keys; ARGV[1] a new epoch id (taken when the store has none: it lost
     * its data, or never had any), ARGV[2] this instance's marker, ARGV[3]
     * its reconciliation's number (0: none), then for each budget hash:
     * this instance's own spend in it, its charges the store has not got,
     * when it expires. The first join of an instance in an epoch adds its
     * own spend back, once; a later one adds the missing charges, once per
     * number. Answers {epoch, joined now, reconciled now, spend + held of
     * each budget hash}. */
    "local e = redis.call('HGET', KEYS[1], 'id')\n"
    "if not e then redis.call('HSET', KEYS[1], 'id', ARGV[1]); e = ARGV[1] end\n"
    "local joined = redis.call('HSETNX', KEYS[1], 'i:' .. ARGV[2], '1')\n"
    "local seq, rec = tonumber(ARGV[3]), 0\n"
    "if seq > 0 and seq > (tonumber(redis.call('HGET', KEYS[1], 'o:' .. ARGV[2])) or 0) then\n"
    "  redis.call('HSET', KEYS[1], 'o:' .. ARGV[2], ARGV[3])\n"
    "  if joined == 0 then rec = 1 end\n"
    "end\n"
    "local out = {e, joined, rec}\n"
    "for i = 2, #KEYS do\n"
    "  local b = 1 + 3 * (i - 1)\n"
    "  local add = 0\n"
    "  if joined == 1 then add = tonumber(ARGV[b]) elseif rec == 1 then add = tonumber(ARGV[b + 1]) end\n"
    "  if add > 0 then\n"
    "    redis.call('HINCRBYFLOAT', KEYS[i], 'spend', string.format('%.17g', add))\n"
    "    local at = tonumber(ARGV[b + 2])\n"
    "    if at > 0 then redis.call('PEXPIREAT', KEYS[i], at) end\n"
    "  end\n"
    "  local h = redis.call('HMGET', KEYS[i], 'spend', 'held')\n"
    "  out[#out + 1] = string.format('%.17g', (tonumber(h[1]) or 0) + (tonumber(h[2]) or 0))\n"
    "end\n"
    "return out\n",
    /* release: KEYS the budget hashes of an admit whose reply never came
     * (timeout, a dropped connection); ARGV[1] its request id, then for
     * each key when it expires. Its reservation goes; where there is none
     * yet (the admit may still be waiting in the store) a mark keeps it from
     * ever being made. */
    "for i = 1, #KEYS do\n"
    "  local r = redis.call('HGET', KEYS[i], 'r:' .. ARGV[1])\n"
    "  if r then\n"
    "    redis.call('HDEL', KEYS[i], 'r:' .. ARGV[1])\n"
    "    local held = tonumber(redis.call('HINCRBYFLOAT', KEYS[i], 'held', string.format('%.17g', -tonumber(r))))\n"
    "    if held < 1e-12 then redis.call('HSET', KEYS[i], 'held', '0') end\n"
    "  else\n"
    "    redis.call('HSET', KEYS[i], 'x:' .. ARGV[1], '1')\n"
    "  end\n"
    "  local at = tonumber(ARGV[1 + i])\n"
    "  if at > 0 then redis.call('PEXPIREAT', KEYS[i], at) end\n"
    "end\n"
    "return 1\n",
};

/* What a reply is given to: err is NULL when the store answered (v, nv:
 * the reply, maybe an error reply), else why there is no reply. */
typedef void (*lg_redis_fn)(struct llmgw *gw, void *arg, const struct lg_rv *v, int nv, const char *err);

struct lg_rpend {
	lg_redis_fn fn; /* NULL: a reply nobody waits for (AUTH, SELECT, SCRIPT LOAD) */
	void *arg;
	int64_t deadline;
	char *cmd; /* EVALSHA: the command, to send again after NOSCRIPT */
	size_t cmdlen;
	int scr, hello; /* which script; hello: a reply of the connection's start */
};

enum { LG_RS_DOWN, LG_RS_CONNECTING, LG_RS_UP };

struct lg_redis {
	struct lg_cfg *cfg; /* the store's settings are this snapshot's (a reference) */
	struct lg_conn *c;
	int state, up;            /* up: /metrics reads it (lg_gauge_get) */
	struct lg_rpend *q;       /* replies waited for, oldest at qhead */
	unsigned qcap, qhead, qn;
	struct lg_timer tm; /* DOWN: the reconnect; else the oldest command's deadline */
	struct lg_timer hb; /* the heartbeat and the health read (first loop only) */
	struct lg_timer lt; /* the renewal of this loop's max_concurrency leases */
	int64_t backoff, down_since;
	unsigned long failed; /* calls failed since the outage began */
	unsigned long nerr;   /* error replies to budget scripts since the last log line about them */
	int64_t err_logged;
	char sha[LG_NSCR][41];
	char why[200];
	char epoch[24];  /* the store's epoch this loop saw last ("": none yet) */
	int64_t bseq;    /* the first loop's reconciliation batch: its number (0: none) */
	int binflight;   /* its join calls waiting for replies */
	int bfail;       /* one of them failed: the same batch goes again */
	struct lg_stjob **orph; /* admits sent whose reply never came: released once connected */
	int norph, lost;        /* lost: more than LG_RD_ORPHANS of them */
};

#define LG_RD_ORPHANS 256

#define LG_RD_MAX_QUEUE 65536 /* commands waiting for replies on one connection */

static void lg_redis_io(struct lg_conn *c, int re);
static void lg_st_redis_epoch(struct llmgw *gw, struct lg_redis *rd);
static void lg_st_redis_release(struct llmgw *gw, struct lg_redis *rd);
static void lg_redis_free(struct llmgw *gw);
static void lg_redis_health(struct llmgw *gw, struct lg_redis *rd);  /* with the heartbeat */
static void lg_redis_leases(struct llmgw *gw, struct lg_timer *t);
static void lg_redis_down(struct llmgw *gw, struct lg_redis *rd, const char *fmt, ...) LG_PRINTF(3, 4);

static void lg_redis_arm(struct llmgw *gw, struct lg_redis *rd)
{
	if (rd->state == LG_RS_DOWN) return;
	if (rd->qn)
		lg_timer_set(gw, &rd->tm, LG_MAX(rd->q[rd->qhead].deadline - gw->now, (int64_t)0));
	else
		lg_timer_clear(gw, &rd->tm);
}

/* Queues a reply to wait for. -1: the queue is full. */
static int lg_redis_push(struct llmgw *gw, struct lg_redis *rd, const struct lg_rpend *e)
{
	if (rd->qn == rd->qcap) {
		unsigned cap = rd->qcap ? rd->qcap * 2 : 64, k;
		struct lg_rpend *nq;
		if (cap > LG_RD_MAX_QUEUE || !(nq = (struct lg_rpend *)malloc(cap * sizeof *nq))) return -1;
		for (k = 0; k < rd->qn; k++) nq[k] = rd->q[(rd->qhead + k) % rd->qcap];
		free(rd->q);
		rd->q = nq;
		rd->qcap = cap;
		rd->qhead = 0;
	}
	rd->q[(rd->qhead + rd->qn) % rd->qcap] = *e;
	rd->qn++;
	lg_gauge_add(&gw->nstore, 1);
	if (rd->qn == 1) lg_redis_arm(gw, rd);
	return 0;
}

static struct lg_rpend lg_redis_pop(struct llmgw *gw, struct lg_redis *rd)
{
	struct lg_rpend e = rd->q[rd->qhead];
	rd->qhead = (rd->qhead + 1) % rd->qcap;
	rd->qn--;
	lg_gauge_add(&gw->nstore, -1);
	return e;
}

/* Sends a script call: EVALSHA with its SHA-1, then args (nargs of them,
 * already RESP: numkeys, keys, argv). fn gets the reply, or why there is
 * none (at once when the store is down). */
static void lg_redis_script(struct llmgw *gw, struct lg_redis *rd, int scr, const struct lg_buf *args, int nargs,
                            lg_redis_fn fn, void *arg)
{
	struct lg_rpend e;
	struct lg_buf b;
	if (rd->state == LG_RS_DOWN || !rd->c) {
		rd->failed++;
		fn(gw, arg, NULL, 0, rd->why[0] ? rd->why : "not connected");
		return;
	}
	lg_buf_init(&b, 0);
	lg_redis_cmd(&b, 2 + nargs);
	lg_redis_argz(&b, "EVALSHA");
	lg_redis_arg(&b, rd->sha[scr], 40);
	lg_buf_add(&b, lg_buf_data(args), lg_buf_used(args));
	memset(&e, 0, sizeof e);
	e.fn = fn, e.arg = arg, e.scr = scr, e.deadline = gw->now + rd->cfg->store_timeout;
	e.cmdlen = lg_buf_used(&b);
	if (b.err || !(e.cmd = (char *)malloc(e.cmdlen)) || lg_redis_push(gw, rd, &e)) {
		free(e.cmd);
		lg_buf_free(&b);
		rd->failed++;
		fn(gw, arg, NULL, 0, "out of memory (or too many store calls waiting)");
		return;
	}
	memcpy(e.cmd, lg_buf_data(&b), e.cmdlen);
	lg_buf_add(&rd->c->out, lg_buf_data(&b), e.cmdlen);
	lg_buf_free(&b);
}

/* A command whose reply only matters when it is an error (the start of a
 * connection: AUTH, SELECT, SCRIPT LOAD). */
static void lg_redis_hello(struct llmgw *gw, struct lg_redis *rd, const struct lg_buf *b)
{
	struct lg_rpend e;
	memset(&e, 0, sizeof e);
	e.hello = 1;
	e.deadline = gw->now + rd->cfg->store_timeout;
	if (lg_redis_push(gw, rd, &e) == 0) lg_buf_add(&rd->c->out, lg_buf_data(b), lg_buf_used(b));
}

static void lg_redis_load(struct llmgw *gw, struct lg_redis *rd, int scr)
{
	struct lg_buf b;
	lg_buf_init(&b, 0);
	lg_redis_cmd(&b, 3);
	lg_redis_argz(&b, "SCRIPT");
	lg_redis_argz(&b, "LOAD");
	lg_redis_argz(&b, lg_redis_scripts[scr]);
	lg_redis_hello(gw, rd, &b);
	lg_buf_free(&b);
}

/* A failed read or write: with TLS, what the engine says (an untrusted
 * certificate, a name that does not match), else what and errno. */
static void lg_redis_tls_down(struct llmgw *gw, struct lg_redis *rd, const char *what)
{
	int e = errno;
#if LLMGW_TLS
	char why[300];
	if (rd->c && rd->c->tls && br_ssl_engine_last_error(rd->c->tls->eng) != BR_ERR_OK) {
		lg_tls_why(rd->c->tls, rd->cfg->store_host, why, sizeof why);
		lg_redis_down(gw, rd, "%s", why);
		return;
	}
	if (rd->c && rd->c->tls && lg_tls_handshaking(rd->c->tls)) {
		lg_tls_why(rd->c->tls, rd->cfg->store_host, why, sizeof why);
		lg_redis_down(gw, rd, "%s", why);
		return;
	}
#endif
	lg_redis_down(gw, rd, "%s: %s", what, strerror(e));
}

/* Writes what the loop's requests queued, once per iteration. */
static void lg_redis_flush(struct llmgw *gw)
{
	struct lg_redis *rd = gw->redis;
	if (!rd || !rd->c || (rd->c->flags & (LG_F_CONNECTING | LG_F_DEAD)) || !lg_buf_used(&rd->c->out)) return;
	if (lg_conn_flush(rd->c) < 0) lg_redis_tls_down(gw, rd, "write");
}

static void lg_redis_connect(struct llmgw *gw, struct lg_redis *rd)
{
	const struct lg_cfg *cf = rd->cfg;
	struct sockaddr_storage sa;
	socklen_t sl = 0;
	int fd, rc, which, one = 1;
	struct lg_buf b;
	memset(&sa, 0, sizeof sa);
	if (cf->store_kind == LG_STORE_UNIX) {
		struct sockaddr_un *un = (struct sockaddr_un *)&sa;
		un->sun_family = AF_UNIX;
		lg_cpy(un->sun_path, sizeof un->sun_path, cf->store_path);
		sl = (socklen_t)sizeof *un;
	} else {
		const char *why = NULL;
		rc = lg_dns_lookup(gw, cf->store_host, cf->store_port, -1, &sa, &sl, &which, &why);
		if (rc == 0) { /* the resolver answers later: look again soon */
			rd->state = LG_RS_DOWN;
			lg_timer_set(gw, &rd->tm, 20);
			return;
		}
		if (rc < 0) {
			lg_redis_down(gw, rd, "cannot resolve %s: %s", cf->store_host, why ? why : "unknown error");
			return;
		}
	}
	fd = socket(sa.ss_family, SOCK_STREAM, 0);
	if (fd < 0 || lg_set_nonblock(fd)) {
		if (fd >= 0) close(fd);
		lg_redis_down(gw, rd, "socket: %s", strerror(errno));
		return;
	}
	(void)fcntl(fd, F_SETFD, FD_CLOEXEC);
	if (sa.ss_family != AF_UNIX) (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	do
		rc = connect(fd, (struct sockaddr *)&sa, sl);
	while (rc < 0 && errno == EINTR);
	if (rc < 0 && errno != EINPROGRESS && errno != EAGAIN) {
		int e = errno;
		close(fd);
		lg_redis_down(gw, rd, "connect: %s", strerror(e));
		return;
	}
	if (!(rd->c = lg_conn_new(gw, fd, LG_ROLE_STORE, lg_redis_io))) {
		close(fd);
		lg_redis_down(gw, rd, "out of memory");
		return;
	}
	if (rc < 0) rd->c->flags |= LG_F_CONNECTING;
#if LLMGW_TLS
	if (cf->store_tls) { /* rediss://: the trust anchors and the host name check of https upstreams */
		if (!cf->nta) {
			lg_redis_down(gw, rd, "TLS: no CA certificates to verify the store with (set ca_file)");
			return;
		}
		if (!(rd->c->tls = lg_tls_client_new(cf, cf->store_host, NULL))) {
			lg_redis_down(gw, rd, "TLS: cannot start a session with %s", cf->store_host);
			return;
		}
		lg_cfg_ref(rd->cfg);
		rd->c->tlscfg = rd->cfg; /* BearSSL points into its trust anchors */
	}
#endif
	rd->state = LG_RS_CONNECTING;
	lg_buf_init(&b, 0);
	if (cf->store_pass) { /* AUTH [user] password */
		lg_redis_cmd(&b, cf->store_user ? 3 : 2);
		lg_redis_argz(&b, "AUTH");
		if (cf->store_user) lg_redis_argz(&b, cf->store_user);
		lg_redis_argz(&b, cf->store_pass);
		lg_redis_hello(gw, rd, &b);
		b.off = b.len = 0;
	}
	if (cf->store_db) {
		lg_redis_cmd(&b, 2);
		lg_redis_argz(&b, "SELECT");
		lg_redis_argi(&b, cf->store_db);
		lg_redis_hello(gw, rd, &b);
	}
	lg_buf_free(&b);
	for (which = 0; which < LG_NSCR; which++) lg_redis_load(gw, rd, which);
	lg_st_redis_epoch(gw, rd); /* before any budget call: the store may have lost its data */
	lg_st_redis_release(gw, rd);
	if (rd->c) lg_conn_events(rd->c);
}

/* The connection failed (why): every waiting call fails with it, and the
 * next attempt comes after the backoff. Logged once per outage. */
static void lg_redis_down(struct llmgw *gw, struct lg_redis *rd, const char *fmt, ...)
{
	va_list ap;
	char why[160];
	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	snprintf(rd->why, sizeof rd->why, "%s: %s", rd->cfg->store_name, why);
	if (rd->c) lg_conn_close(rd->c);
	rd->c = NULL;
	rd->state = LG_RS_DOWN;
	lg_gauge_add(&rd->up, -rd->up);
	if (!rd->down_since) {
		rd->down_since = gw->now ? gw->now : lg_now_ms();
		rd->failed = 0;
		LG_LOG(gw, LG_LOG_WARN, "store %s (on_error = %s); retrying, and saying so again when it is back", rd->why,
		       lg_onerr_names[rd->cfg->store_on_error]);
	}
	while (rd->qn) { /* calls made by these callbacks fail at once: the state is DOWN */
		struct lg_rpend e = lg_redis_pop(gw, rd);
		free(e.cmd);
		if (e.fn) {
			rd->failed++;
			e.fn(gw, e.arg, NULL, 0, rd->why);
		}
	}
	rd->backoff = rd->backoff ? LG_MIN(rd->backoff * 2, (int64_t)2000) : 50;
	lg_timer_set(gw, &rd->tm, rd->backoff);
}

static void lg_redis_reply(struct llmgw *gw, struct lg_redis *rd, const struct lg_rv *v, int nv)
{
	struct lg_rpend e;
	if (!rd->qn) {
		lg_redis_down(gw, rd, "a reply nothing asked for");
		return;
	}
	e = lg_redis_pop(gw, rd);
	if (e.hello && v[0].type == LG_RV_ERR) {
		lg_redis_down(gw, rd, "%.*s", (int)LG_MIN(v[0].len, (size_t)120), v[0].p);
		return;
	}
	if (rd->state != LG_RS_UP) {
		rd->state = LG_RS_UP;
		rd->backoff = 0;
		lg_gauge_add(&rd->up, 1 - rd->up);
		if (rd->down_since) {
			LG_LOG(gw, LG_LOG_WARN, "store %s is back after %lld ms; %lu calls failed meanwhile",
			       rd->cfg->store_name, (long long)(gw->now - rd->down_since), rd->failed);
			rd->down_since = 0;
			rd->why[0] = 0;
		}
	}
	if (e.cmd && v[0].type == LG_RV_ERR && v[0].len >= 8 && memcmp(v[0].p, "NOSCRIPT", 8) == 0) {
		/* the store lost its scripts: load it and send the call once more */
		struct lg_rpend again = e;
		lg_redis_load(gw, rd, e.scr);
		again.cmd = NULL; /* once */
		again.deadline = gw->now + rd->cfg->store_timeout;
		if (lg_redis_push(gw, rd, &again) == 0) {
			lg_buf_add(&rd->c->out, e.cmd, e.cmdlen);
			free(e.cmd);
			return;
		}
	}
	free(e.cmd);
	if (e.fn) e.fn(gw, e.arg, v, nv, NULL);
	if (rd->c) lg_redis_arm(gw, rd);
}

static void lg_redis_io(struct lg_conn *c, int re)
{
	struct llmgw *gw = c->gw;
	struct lg_redis *rd = gw->redis;
	struct lg_rv v[LG_RV_MAX];
	if (!rd || rd->c != c) {
		lg_conn_close(c);
		return;
	}
	if (c->flags & LG_F_CONNECTING) {
		int e = 0;
		socklen_t el = sizeof e;
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &el) < 0) e = errno;
		if (e) {
			lg_redis_down(gw, rd, "connect: %s", strerror(e));
			return;
		}
		c->flags &= ~(unsigned)LG_F_CONNECTING;
	}
	if ((lg_buf_used(&c->out) || c->tls) && lg_conn_flush(c) < 0) {
		lg_redis_tls_down(gw, rd, "write");
		return;
	}
	if (re & (POLLIN | POLLHUP | POLLERR)) {
		long k;
		while ((k = lg_io_read(c, LLMGW_STORE_MAX_REPLY + 65536)) > 0) {
			while (lg_buf_used(&c->in)) {
				int nv = 0;
				long used = lg_redis_parse(lg_buf_data(&c->in), lg_buf_used(&c->in), v, LG_RV_MAX, &nv,
				                           LLMGW_STORE_MAX_REPLY);
				if (used == 0) break;
				if (used < 0) {
					lg_redis_down(gw, rd, "a reply that is not RESP2 or over the limits");
					return;
				}
				lg_redis_reply(gw, rd, v, nv); /* v points into c->in: consumed after */
				if (rd->c != c) return;
				lg_buf_consume(&c->in, (size_t)used);
			}
		}
		if (k == 0 || k == -1) {
			if (k == 0) lg_redis_down(gw, rd, "the store closed the connection");
			else lg_redis_tls_down(gw, rd, "read");
			return;
		}
		if (lg_buf_used(&c->in) >= LLMGW_STORE_MAX_REPLY + 65536) {
			lg_redis_down(gw, rd, "a reply over %u bytes", (unsigned)LLMGW_STORE_MAX_REPLY);
			return;
		}
		lg_blk_give(gw, &c->in);
		if (c->tls && lg_buf_used(&c->out) && lg_conn_flush(c) < 0) { /* the handshake may just have ended */
			lg_redis_tls_down(gw, rd, "write");
			return;
		}
	}
	lg_conn_events(c);
}

static void lg_redis_timer(struct llmgw *gw, struct lg_timer *t)
{
	struct lg_redis *rd = gw->redis;
	LG_UNUSED(t);
	if (!rd) return;
	if (rd->state == LG_RS_DOWN) {
		lg_redis_connect(gw, rd);
		return;
	}
	if (rd->qn && rd->q[rd->qhead].deadline <= gw->now)
		lg_redis_down(gw, rd, "no answer within %lld ms (timeout)", (long long)rd->cfg->store_timeout);
	else
		lg_redis_arm(gw, rd);
}

static void lg_redis_beaten(struct llmgw *gw, void *arg, const struct lg_rv *v, int nv, const char *err)
{
	LG_UNUSED(arg);
	if (!err && nv && v[0].type == LG_RV_INT) lg_gauge_add(&gw->store_inst, (int)v[0].i - gw->store_inst);
}

/* Every second, the first loop says in the store that this instance lives. */
static void lg_redis_beat(struct llmgw *gw, struct lg_timer *t)
{
	struct lg_redis *rd = gw->redis;
	struct lg_buf b;
	char k[400];
	if (!rd) return;
	lg_timer_set(gw, t, 1000);
	if (rd->state != LG_RS_UP && rd->state != LG_RS_CONNECTING) return;
	lg_buf_init(&b, 0);
	lg_redis_argz(&b, "2");
	snprintf(k, sizeof k, "%sinst:%s", rd->cfg->store_prefix, rd->cfg->store_instance);
	lg_redis_argz(&b, k);
	snprintf(k, sizeof k, "%sinsts", rd->cfg->store_prefix);
	lg_redis_argz(&b, k);
	lg_redis_argi(&b, lg_wall_ms());
	lg_redis_argz(&b, rd->cfg->store_instance);
	lg_redis_script(gw, rd, LG_SCR_BEAT, &b, 5, lg_redis_beaten, NULL);
	lg_buf_free(&b);
	lg_redis_health(gw, rd);
	lg_st_redis_epoch(gw, rd); /* a flushed store found within a second; what it said, for on_error = local */
}

/* The loop's client, made (or remade, when the url changed) for its
 * configuration; NULL without [store]. */
static struct lg_redis *lg_redis_get(struct llmgw *gw, struct lg_cfg *cfg)
{
	struct lg_redis *rd = gw->redis;
	int i;
	if (!cfg->store_kind) return NULL;
	if (rd && strcmp(rd->cfg->store_url, cfg->store_url) == 0) {
		if (rd->cfg != cfg) { /* prefix, timeout, on_error, instance from the new one */
			lg_cfg_ref(cfg);
			lg_cfg_unref(rd->cfg);
			rd->cfg = cfg;
		}
		return rd;
	}
	if (rd) lg_redis_free(gw);
	if (!(rd = (struct lg_redis *)calloc(1, sizeof *rd))) return NULL;
	if (!gw->now) gw->now = lg_now_ms();
	lg_cfg_ref(cfg);
	rd->cfg = cfg;
	rd->tm.hidx = rd->hb.hidx = rd->lt.hidx = -1;
	rd->tm.fn = lg_redis_timer;
	rd->hb.fn = lg_redis_beat;
	rd->lt.fn = lg_redis_leases;
	for (i = 0; i < LG_NSCR; i++) {
		unsigned char h[20];
		int k;
		lg_sha1(lg_redis_scripts[i], strlen(lg_redis_scripts[i]), h);
		for (k = 0; k < 20; k++) {
			rd->sha[i][2 * k] = "0123456789abcdef"[h[k] >> 4];
			rd->sha[i][2 * k + 1] = "0123456789abcdef"[h[k] & 15];
		}
		rd->sha[i][40] = 0;
	}
	gw->redis = rd;
	if (!gw->child) lg_timer_set(gw, &rd->hb, 0);
	lg_timer_set(gw, &rd->lt, LG_MAX(cfg->store_lease / 3, (int64_t)100));
	lg_redis_connect(gw, rd);
	return rd;
}

/* The loop's client as it is (made when there is none yet): calls made
 * from a reply's callback must never replace it. */
static struct lg_redis *lg_redis_cur(struct llmgw *gw)
{
	if (!gw->redis && gw->cfg && gw->cfg->store_kind) lg_redis_get(gw, gw->cfg);
	return gw->redis;
}

/* The client goes: the calls waiting fail, the connection is closed. */
static void lg_redis_free(struct llmgw *gw)
{
	struct lg_redis *rd = gw->redis;
	if (!rd) return;
	lg_timer_clear(gw, &rd->hb);
	lg_timer_clear(gw, &rd->lt);
	if (!rd->down_since) rd->down_since = gw->now ? gw->now : 1; /* an end, not an outage: not logged */
	lg_redis_down(gw, rd, "the gateway stops using this store");
	lg_timer_clear(gw, &rd->tm);
	gw->redis = NULL;
	lg_cfg_unref(rd->cfg);
	while (rd->norph) free(rd->orph[--rd->norph]);
	free(rd->orph);
	free(rd->q);
	free(rd);
}

/* The budget hashes of a request's key: its period's (one today; the
 * scripts take any number). Returns how many. */
#define LG_ST_PERIODS 4
struct lg_stjob {
	struct lg_req *r; /* NULL once the request went away (cancel) */
	char id[40];
	int nk;
	char k[LG_ST_PERIODS][200];
	int64_t at[LG_ST_PERIODS]; /* when each expires (ms), 0: never */
	double budget[LG_ST_PERIODS];
	double res;
	/* admit's batch: each part's answer (1 yes, 0 refused, -1 failed) */
	int pending, lim, bud, lim_sent, bud_sent, which, lwhich, err_reply;
	int64_t lcount, lretry; /* a refusing limit's count, ms until it has room */
	double spend, held;     /* the refusing budget's */
	char why[480], aff[200], store[200], prefix[200], kname[64];
	int again; /* sent a second time, after a join */
	int orph;  /* its budget call got no reply: kept to be released (lg_st_redis_orphan) */
	int sent;  /* its admit went to the store (a missing reply may still have reserved) */
};

/* What view read from the store for /v1/key and /v1/generation; r->st_view
 * points at it while the answer is written. */
struct lg_stview {
	int fleet;                          /* the key figures below are the store's */
	double spend, held;                 /* the budget hash of the current period */
	int64_t rpm_used, leases, tpm_used; /* the last minute's requests and tokens, leases held */
	int64_t insts;                      /* instances alive (heartbeat in the last 3 s) */
	const char *rec;                    /* a generation record ("<key>\n<answer>"), or NULL */
	size_t reclen;
};

struct lg_stvjob {
	struct lg_req *r; /* NULL once the request went away */
	void (*fn)(struct lg_req *r);
};

static int lg_st_redis_keys(const struct lg_req *r, const struct lg_cfg *cf, struct lg_stjob *j)
{
	const struct lg_key *key = r->key;
	int64_t reset, id = lg_acct_period(key->period, r->wall0, &reset);
	snprintf(j->k[0], sizeof j->k[0], "%sb:%s:%s:%lld", cf->store_prefix, key->name, lg_period_names[key->period],
	         (long long)id);
	j->at[0] = reset ? reset + 3600000 : 0;
	j->budget[0] = key->budget;
	lg_cpy(j->id, sizeof j->id, r->id);
	return j->nk = 1;
}

/* --- the store's epoch: refilled after it lost its data, reconciled after an outage --- */

/* The store keeps an epoch hash (prefix "epoch"): a random id, taken by the
 * first instance that finds none, and one field per instance that joined
 * it. Every connection joins before its first budget call, and the first
 * loop joins again each second (with the heartbeat). An instance's first
 * join in an epoch adds back its own spend of the current periods (from
 * its books: the ledger of state_dir), so a store that restarted empty, was
 * flushed or failed over to an empty replica gets the fleet-wide spend
 * back once every instance has joined; the script makes that happen once
 * per instance and epoch however often it is called. Budget calls of an
 * instance that has not joined the current epoch do nothing ({2}, 2): its
 * join carries those charges. A join also brings what the store was last
 * seen to hold (on_error = local shares it out) and, from the first loop,
 * the charges made while the store was unreachable, under a number the
 * store remembers, so a reply lost on the way cannot add them twice. */
struct lg_stjoin {
	int n, seq; /* seq: this call carries the reconciliation batch */
	struct {
		struct lg_kstate *ks;
		double out, mine; /* st_out and spend when sent */
		int64_t pid;
	} e[];
};

#define LG_JOIN_KEYS 56 /* budget hashes per join call: its reply stays within LG_RV_MAX values */

static void lg_st_redis_epoch_got(struct llmgw *gw, void *arg, const struct lg_rv *v, int nv, const char *err)
{
	struct lg_stjoin *j = (struct lg_stjoin *)arg;
	struct lg_redis *rd = gw->redis;
	int i, joined, rec;
	double added = 0;
	if (j->seq && rd) rd->binflight--;
	if (err || nv < 4 + j->n || v[0].type != LG_RV_ARR || v[1].type != LG_RV_BULK || v[2].type != LG_RV_INT ||
	    v[3].type != LG_RV_INT) {
		if (j->seq && rd) rd->bfail = 1;
		if (!err)
			LG_LOG(gw, LG_LOG_WARN, "store %s: the join script answered %.*s", rd ? rd->cfg->store_name : "",
			       nv && v[0].type == LG_RV_ERR ? (int)LG_MIN(v[0].len, (size_t)160) : 2,
			       nv && v[0].type == LG_RV_ERR ? v[0].p : "??");
		free(j);
		return;
	}
	joined = (int)v[2].i, rec = (int)v[3].i;
	lg_lock(gw);
	for (i = 0; i < j->n; i++) {
		struct lg_kstate *ks = j->e[i].ks;
		char t[40];
		if (joined) { /* its spend went in whole: the outage's charges with it */
			added += j->e[i].mine;
			ks->st_out -= j->e[i].out;
			if (j->seq) ks->st_sent = 0;
		} else if (j->seq) { /* reconciled now, or by an earlier call whose reply was lost */
			ks->st_out -= ks->st_sent;
			ks->st_sent = 0;
		}
		if (ks->st_out < 1e-12) ks->st_out = 0;
		if (v[4 + i].type == LG_RV_BULK) {
			snprintf(t, sizeof t, "%.*s", (int)LG_MIN(v[4 + i].len, (size_t)39), v[4 + i].p);
			ks->st_fleet = strtod(t, NULL);
			ks->st_mine = j->e[i].mine;
			ks->st_pid = j->e[i].pid;
			ks->st_seen = 1;
		}
	}
	lg_unlock(gw);
	if (j->seq && rd && rd->binflight == 0) {
		if (!rd->bfail) rd->bseq = 0;
		rd->bfail = 0;
	}
	if (rd) {
		char ep[sizeof rd->epoch];
		snprintf(ep, sizeof ep, "%.*s", (int)LG_MIN(v[1].len, sizeof ep - 1), v[1].p);
		if (strcmp(ep, rd->epoch) != 0) {
			if (rd->epoch[0] || joined)
				LG_LOG(gw, joined && rd->epoch[0] ? LG_LOG_WARN : LG_LOG_INFO, "store %s: epoch %s%s%s%s; this instance %s",
				       rd->cfg->store_name, ep, rd->epoch[0] ? " (was " : "", rd->epoch,
				       rd->epoch[0] ? ": the store lost its data)" : "",
				       joined ? "joined it and added back its own charges of the current periods"
				              : "had joined it already");
			memcpy(rd->epoch, ep, sizeof ep);
		}
	}
	if (joined && added > 0)
		LG_LOG(gw, LG_LOG_INFO, "store: %.6f USD of this instance's charges added back", added);
	if (rec) LG_LOG(gw, LG_LOG_INFO, "store: the charges made while it was unreachable are added to it");
	free(j);
}

/* Joins the store's epoch (see above): all budget keys of the
 * configuration, in calls of LG_JOIN_KEYS. */
static void lg_st_redis_epoch(struct llmgw *gw, struct lg_redis *rd)
{
	const struct lg_cfg *cf = rd->cfg;
	int64_t wall = lg_wall_ms();
	int i = 0, chunk = 0, batch;
	char cand[24], k[400];
	snprintf(cand, sizeof cand, "%016llx", (unsigned long long)lg_rand(&gw->rng));
	/* the first loop carries the reconciliation: a new batch once the last one is through */
	batch = !gw->child && !rd->binflight;
	if (batch && !rd->bseq) {
		int any = 0, x;
		lg_lock(gw);
		for (x = 0; x < cf->nkeys; x++) {
			struct lg_kstate *ks;
			if (!(cf->keys[x]->budget > 0) || !(ks = lg_acct_kstate(gw, cf->keys[x]->name))) continue;
			ks->st_sent = ks->st_out;
			any |= ks->st_out > 0;
		}
		lg_unlock(gw);
		if (any) rd->bseq = LG_MAX(wall, rd->bseq + 1);
	}
	batch = batch && rd->bseq;
	do {
		struct lg_stjoin *j;
		struct lg_buf kb, ab;
		int n = 0;
		if (!(j = (struct lg_stjoin *)calloc(1, sizeof *j + LG_JOIN_KEYS * sizeof j->e[0]))) return;
		lg_buf_init(&kb, 0);
		lg_buf_init(&ab, 0);
		snprintf(k, sizeof k, "%sepoch", cf->store_prefix);
		lg_redis_argz(&kb, k);
		lg_redis_argz(&ab, cand);
		if (chunk) snprintf(k, sizeof k, "%s:%d", cf->store_instance, chunk);
		lg_redis_argz(&ab, chunk ? k : cf->store_instance);
		lg_redis_argi(&ab, batch ? rd->bseq : 0);
		lg_lock(gw);
		for (; i < cf->nkeys && n < LG_JOIN_KEYS; i++) {
			const struct lg_key *key = cf->keys[i];
			struct lg_kstate *ks;
			int64_t reset, id;
			if (!(key->budget > 0) || !(ks = lg_acct_kstate(gw, key->name))) continue;
			lg_acct_roll(ks, key, wall);
			id = lg_acct_period(key->period, wall, &reset);
			snprintf(k, sizeof k, "%sb:%s:%s:%lld", cf->store_prefix, key->name, lg_period_names[key->period],
			         (long long)id); /* the names of lg_st_redis_keys */
			lg_redis_argz(&kb, k);
			lg_redis_argd(&ab, ks->spend);
			lg_redis_argd(&ab, batch ? ks->st_sent : 0);
			lg_redis_argi(&ab, reset ? reset + 3600000 : 0);
			j->e[n].ks = ks;
			j->e[n].out = ks->st_out;
			j->e[n].mine = ks->spend;
			j->e[n].pid = id;
			n++;
		}
		lg_unlock(gw);
		j->n = n;
		j->seq = batch;
		if (batch) rd->binflight++;
		lg_buf_add(&kb, lg_buf_data(&ab), lg_buf_used(&ab));
		{
			struct lg_buf b;
			lg_buf_init(&b, 0);
			lg_redis_argi(&b, 1 + n);
			lg_buf_add(&b, lg_buf_data(&kb), lg_buf_used(&kb));
			lg_redis_script(gw, rd, LG_SCR_JOIN, &b, 1 + (1 + n) + 3 + 3 * n, lg_st_redis_epoch_got, j);
			lg_buf_free(&b);
		}
		lg_buf_free(&kb);
		lg_buf_free(&ab);
		chunk++;
	} while (i < cf->nkeys);
}

/* A settle, or the release of a reservation nobody waits for (cost 0). */
static void lg_st_redis_settled(struct llmgw *gw, void *arg, const struct lg_rv *v, int nv, const char *err)
{
	LG_UNUSED(arg);
	if (err || !nv || v[0].type == LG_RV_ERR)
		LG_LOG(gw, LG_LOG_DEBUG, "store: a settle failed (%s): its reservation stays held until the period ends",
		       err ? err : "an error reply");
}

/* The last two arguments of the budget scripts: the epoch hash and the
 * instance (a call of an instance that has not joined does nothing). */
static void lg_st_redis_epoch_args(const struct lg_cfg *cf, struct lg_buf *b)
{
	char k[400];
	snprintf(k, sizeof k, "%sepoch", cf->store_prefix);
	lg_redis_argz(b, k);
	lg_redis_argz(b, cf->store_instance);
}

static void lg_st_redis_send_settle(struct llmgw *gw, struct lg_redis *rd, const struct lg_stjob *j, double cost)
{
	struct lg_buf b;
	int i;
	lg_buf_init(&b, 0);
	lg_redis_argi(&b, j->nk);
	for (i = 0; i < j->nk; i++) lg_redis_argz(&b, j->k[i]);
	lg_redis_argz(&b, j->id);
	lg_redis_argd(&b, cost);
	for (i = 0; i < j->nk; i++) lg_redis_argi(&b, j->at[i]);
	lg_st_redis_epoch_args(rd->cfg, &b);
	lg_redis_script(gw, rd, LG_SCR_SETTLE, &b, 1 + 2 * j->nk + 2 + 2, lg_st_redis_settled, NULL);
	lg_buf_free(&b);
}

/* Gives back what lg_acct_admit took in this process (the store refused,
 * or failed). */
static void lg_st_redis_unadmit(struct lg_req *r)
{
	struct lg_kstate *ks = r->ks;
	if (!ks) return;
	lg_lock(r->gw);
	ks->inflight--;
	ks->reserved -= r->reserved;
	if (ks->reserved < 1e-12) ks->reserved = 0; /* (the store's admit took no local rpm token) */
	lg_unlock(r->gw);
	r->ks = NULL;
	r->reserved = 0;
}

/* The store's answer to admit's budget script: kept in the job until
 * every reply of the batch is in (lg_st_redis_join). */
static void lg_st_redis_join(struct llmgw *gw, struct lg_stjob *j);

static void lg_st_redis_admitted(struct llmgw *gw, void *arg, const struct lg_rv *v, int nv, const char *err);

/* An admit that got no reply: kept to be released once the store answers
 * again (its reservation may have been made), or freed. */
static void lg_st_redis_orphan(struct llmgw *gw, struct lg_stjob *j)
{
	struct lg_redis *rd = gw->redis;
	struct lg_stjob **no = rd ? rd->orph : NULL;
	j->r = NULL;
	if (!rd || !j->sent) {
		free(j);
		return;
	}
	if (rd->norph < LG_RD_ORPHANS && !(rd->norph & 15)) /* room for 16 more */
		no = (struct lg_stjob **)realloc(rd->orph, (size_t)(rd->norph + 16) * sizeof *no);
	if (rd->norph == LG_RD_ORPHANS || !no) {
		if (!rd->lost++)
			LG_LOG(gw, LG_LOG_WARN, "store %s: more than %d reservations to release; the rest stay held until "
			       "their period ends", rd->cfg->store_name, LG_RD_ORPHANS);
		free(j);
		return;
	}
	rd->orph = no;
	rd->orph[rd->norph++] = j;
}

static void lg_st_redis_released(struct llmgw *gw, void *arg, const struct lg_rv *v, int nv, const char *err)
{
	struct lg_stjob *j = (struct lg_stjob *)arg;
	LG_UNUSED(v), LG_UNUSED(nv);
	if (err) lg_st_redis_orphan(gw, j); /* again, on the next connection */
	else free(j);
}

/* Each connection, after its join: the reservations of admits whose reply
 * never came are released (or kept from being made). */
static void lg_st_redis_release(struct llmgw *gw, struct lg_redis *rd)
{
	int n = rd->norph, i, k;
	struct lg_stjob **o = rd->orph;
	rd->orph = NULL;
	rd->norph = 0;
	for (i = 0; i < n; i++) {
		struct lg_buf b;
		struct lg_stjob *j = o[i];
		lg_buf_init(&b, 0);
		lg_redis_argi(&b, j->nk);
		for (k = 0; k < j->nk; k++) lg_redis_argz(&b, j->k[k]);
		lg_redis_argz(&b, j->id);
		for (k = 0; k < j->nk; k++) lg_redis_argi(&b, j->at[k]);
		lg_redis_script(gw, rd, LG_SCR_RELEASE, &b, 1 + 2 * j->nk + 1, lg_st_redis_released, j);
		lg_buf_free(&b);
	}
	free(o);
}

static void lg_st_redis_send_admit(struct llmgw *gw, struct lg_redis *rd, struct lg_stjob *j)
{
	struct lg_buf b;
	int i;
	lg_buf_init(&b, 0);
	lg_redis_argi(&b, j->nk);
	for (i = 0; i < j->nk; i++) lg_redis_argz(&b, j->k[i]);
	lg_redis_argz(&b, j->id);
	lg_redis_argd(&b, j->res);
	for (i = 0; i < j->nk; i++) {
		lg_redis_argd(&b, j->budget[i]);
		lg_redis_argi(&b, j->at[i]);
	}
	lg_st_redis_epoch_args(rd->cfg, &b);
	if (rd->state != LG_RS_DOWN && rd->c) j->sent = 1;
	lg_redis_script(gw, rd, LG_SCR_ADMIT, &b, 1 + j->nk + 2 + 2 * j->nk + 2, lg_st_redis_admitted, j);
	lg_buf_free(&b);
}

/* on_error = local: this instance's share of what the store was last seen
 * to leave (the budget less the fleet-wide spend and held, divided by the
 * live instances), on top of what it had spent then. 0, or 402 (msg). */
static int lg_st_redis_share(struct lg_req *r, char *msg, size_t mlen)
{
	struct llmgw *gw = r->gw, *first = gw->sh ? gw->sh->w[0] : gw;
	struct lg_kstate *ks = r->ks;
	int n = first ? lg_gauge_get(&first->store_inst) : 1, status = 0;
	double left, mine;
	if (!ks || !r->key || !(r->key->budget > 0)) return 0;
	if (n < 1) n = 1;
	lg_lock(gw);
	if (ks->st_seen && ks->st_pid == ks->period_id) {
		left = r->key->budget - ks->st_fleet;
		mine = ks->st_mine + (left > 0 ? left : 0) / n;
		if (ks->spend + ks->reserved > mine + 1e-12) {
			char when[64];
			lg_acct_resets(r->key->period, r->wall0, when, sizeof when);
			snprintf(msg, mlen,
			         "key '%s' has used its share of its budget of %g USD/%s while the state store is unreachable: "
			         "%.6f USD were left across all instances when it was last seen, a share of %.6f USD for each "
			         "of %d instances; this instance has %.6f USD spent and held since; the budget resets at %s",
			         r->key->name, r->key->budget, lg_period_names[r->key->period], left > 0 ? left : 0,
			         (left > 0 ? left : 0) / n, n, ks->spend + ks->reserved - ks->st_mine, when);
			status = 402;
		}
	}
	lg_unlock(gw);
	return status;
}

/* The store's answer to admit's script. */
static void lg_st_redis_admitted(struct llmgw *gw, void *arg, const struct lg_rv *v, int nv, const char *err)
{
	struct lg_stjob *j = (struct lg_stjob *)arg;
	int ok = !err && nv >= 2 && v[0].type == LG_RV_ARR && v[1].type == LG_RV_INT;
	if (ok && v[1].i == 2 && !j->again && gw->redis) { /* not joined (the store lost its data): join, ask again */
		j->again = 1;
		lg_st_redis_epoch(gw, gw->redis);
		lg_st_redis_send_admit(gw, gw->redis, j);
		return;
	}
	j->orph = !!err; /* no reply: the admit may have reserved, released once the store answers again */
	if (ok && v[1].i == 1) {
		j->bud = 1;
	} else if (ok && nv >= 5 && v[1].i == 0) { /* refused: the fleet-wide spend does not leave room */
		char t[2][40];
		int k;
		for (k = 0; k < 2; k++) lg_cpy(t[k], sizeof t[k], "0");
		for (k = 0; k < 2; k++)
			if (v[3 + k].type == LG_RV_BULK) snprintf(t[k], sizeof t[k], "%.*s", (int)LG_MIN(v[3 + k].len, (size_t)39), v[3 + k].p);
		j->spend = strtod(t[0], NULL);
		j->held = strtod(t[1], NULL);
		j->which = v[2].type == LG_RV_INT ? (int)v[2].i - 1 : 0;
		if (j->which < 0 || j->which >= j->nk) j->which = 0;
		j->bud = 0;
	} else {
		j->bud = -1;
		if (err)
			snprintf(j->why, sizeof j->why, "%s", err);
		else if (nv && v[0].type == LG_RV_ERR)
			snprintf(j->why, sizeof j->why, "%s: %.*s", j->store, (int)LG_MIN(v[0].len, (size_t)160), v[0].p);
		else
			snprintf(j->why, sizeof j->why, "%s: an answer the budget script does not give", j->store);
		j->err_reply = !err;
	}
	lg_st_redis_join(gw, j);
}

/* The limits script's answer (rpm, tpm, max_concurrency). */
static void lg_st_redis_limited(struct llmgw *gw, void *arg, const struct lg_rv *v, int nv, const char *err)
{
	struct lg_stjob *j = (struct lg_stjob *)arg;
	int ok = !err && nv >= 2 && v[0].type == LG_RV_ARR && v[1].type == LG_RV_INT;
	if (ok && v[1].i == 1) {
		j->lim = 1;
	} else if (ok && nv >= 5 && v[1].i == 0 && v[2].type == LG_RV_INT) {
		j->lim = 0;
		j->lwhich = (int)v[2].i;
		j->lcount = v[3].type == LG_RV_INT ? v[3].i : 0;
		j->lretry = v[4].type == LG_RV_INT ? v[4].i : 1000;
	} else {
		j->lim = -1;
		if (err)
			snprintf(j->why, sizeof j->why, "%s", err);
		else if (nv && v[0].type == LG_RV_ERR)
			snprintf(j->why, sizeof j->why, "%s: %.*s", j->store, (int)LG_MIN(v[0].len, (size_t)160), v[0].p);
		else
			snprintf(j->why, sizeof j->why, "%s: an answer the limits script does not give", j->store);
		j->err_reply = !err;
	}
	lg_st_redis_join(gw, j);
}

/* The prompt's target from the shared affinity map (a miss, or a failure:
 * the plan stays as it is). */
static void lg_st_redis_affined(struct llmgw *gw, void *arg, const struct lg_rv *v, int nv, const char *err)
{
	struct lg_stjob *j = (struct lg_stjob *)arg;
	if (!err && nv && v[0].type == LG_RV_BULK && v[0].len < sizeof j->aff)
		memcpy(j->aff, v[0].p, v[0].len), j->aff[v[0].len] = 0;
	lg_st_redis_join(gw, j);
}

/* Undoes the limits script's count and lease (a request refused by its
 * budget, or gone), or ends them at settle (tokens against tpm). */
static void lg_st_redis_send_ldone(struct llmgw *gw, struct lg_redis *rd, const char *prefix, const char *key,
                                   const char *id, int64_t tokens, int undo)
{
	struct lg_buf b;
	char k[3][200];
	int i;
	snprintf(k[0], sizeof k[0], "%srpm:%s", prefix, key);
	snprintf(k[1], sizeof k[1], "%sconc:%s", prefix, key);
	snprintf(k[2], sizeof k[2], "%stpm:%s", prefix, key);
	lg_buf_init(&b, 0);
	lg_redis_argz(&b, "3");
	for (i = 0; i < 3; i++) lg_redis_argz(&b, k[i]);
	lg_redis_argz(&b, id);
	lg_redis_argi(&b, lg_wall_ms());
	lg_redis_argi(&b, tokens);
	lg_redis_argz(&b, undo ? "1" : "0");
	lg_redis_script(gw, rd, LG_SCR_LDONE, &b, 8, lg_st_redis_settled, NULL);
	lg_buf_free(&b);
}

/* Every reply of admit's batch is in: the request goes on, or is refused
 * (429, 402, 503), and what the store took for a refused or vanished
 * request is given back. */
static void lg_st_redis_join(struct llmgw *gw, struct lg_stjob *j)
{
	struct lg_req *r = j->r;
	struct lg_redis *rd = gw->redis;
	char msg[1024];
	int fail;
	if (--j->pending > 0) return;
	fail = j->lim < 0 || j->bud < 0;
	if (r && !fail && j->lim && j->bud) { /* admitted (a part not asked for is 1) */
		r->st_job = NULL;
		if (j->aff[0]) lg_route_affine(r, j->aff);
		r->st_held = j->bud_sent;
		r->st_lim = j->lim_sent;
		free(j);
		lg_st_admitted(r, 0, 0, "");
		return;
	}
	if (rd && j->bud == 1 && j->bud_sent) lg_st_redis_send_settle(gw, rd, j, 0);
	if (rd && j->lim == 1 && j->lim_sent) lg_st_redis_send_ldone(gw, rd, j->prefix, j->kname, j->id, 0, 1);
	if (!r) {
		if (j->orph) lg_st_redis_orphan(gw, j);
		else free(j);
		return;
	}
	r->st_job = NULL;
	lg_st_redis_unadmit(r);
	if (fail) {
		if (j->err_reply && rd) { /* an error reply: logged at most once a minute, with a count */
			rd->nerr++;
			if (!rd->err_logged || gw->now - rd->err_logged >= 60000) {
				LG_LOG(gw, LG_LOG_WARN, "store %s (%lu such answers since the last line like this)", j->why, rd->nerr);
				rd->err_logged = gw->now;
				rd->nerr = 0;
			}
		}
		if (r->cfg->store_on_error == 1) { /* local: this instance's own books and its share decide */
			int retry = 0, status;
			if (j->orph) lg_st_redis_orphan(gw, j);
			else free(j);
			lg_lock(gw);
			status = lg_acct_admit(r, msg, sizeof msg, &retry, 1);
			lg_unlock(gw);
			if (!status && (status = lg_st_redis_share(r, msg, sizeof msg))) lg_st_redis_unadmit(r);
			if (!status) r->st_held = 2; /* charged here only: the store gets it when it is back */
			lg_st_admitted(r, status, retry, msg);
			return;
		}
		snprintf(msg, sizeof msg,
		         "the state store failed (%s); key '%s' has a budget or limits and [store] on_error = closed", j->why,
		         r->key->name);
		if (j->orph) lg_st_redis_orphan(gw, j);
		else free(j);
		lg_st_admitted(r, 503, 1, msg);
		return;
	}
	if (j->lim == 0) { /* over a limit, counted across every instance */
		const struct lg_key *key = r->key;
		int retry = (int)((LG_MAX(j->lretry, (int64_t)1) + 999) / 1000);
		if (j->lwhich == 1)
			snprintf(msg, sizeof msg, "key '%s' has %lld requests in flight across all instances, its max_concurrency",
			         key->name, (long long)j->lcount);
		else if (j->lwhich == 2)
			snprintf(msg, sizeof msg,
			         "key '%s' is over its rate limit of %ld requests per minute (%lld in the last minute across all "
			         "instances)",
			         key->name, key->rpm, (long long)j->lcount);
		else
			snprintf(msg, sizeof msg,
			         "key '%s' is over its rate limit of %ld tokens per minute (%lld in the last minute across all "
			         "instances)",
			         key->name, key->tpm, (long long)j->lcount);
		free(j);
		lg_st_admitted(r, 429, retry, msg);
		return;
	}
	{ /* the budget refused */
		char when[64];
		lg_acct_resets(r->key->period, r->wall0, when, sizeof when);
		snprintf(msg, sizeof msg,
		         "key '%s' has exhausted its budget of %g USD/%s: %.6f USD spent this period across all "
		         "instances, %.6f USD held by requests in flight, this request may cost up to %.6f USD; the "
		         "budget resets at %s",
		         r->key->name, j->budget[j->which], lg_period_names[r->key->period], j->spend, j->held, j->res, when);
		free(j);
		lg_st_admitted(r, 402, 0, msg);
	}
}

/* A store command that is not a script (GET, SET): fn gets the reply. */
static void lg_redis_call(struct llmgw *gw, struct lg_redis *rd, const struct lg_buf *cmd, lg_redis_fn fn, void *arg)
{
	struct lg_rpend e;
	if (rd->state == LG_RS_DOWN || !rd->c) {
		rd->failed++;
		if (fn) fn(gw, arg, NULL, 0, rd->why[0] ? rd->why : "not connected");
		return;
	}
	memset(&e, 0, sizeof e);
	e.fn = fn, e.arg = arg, e.deadline = gw->now + rd->cfg->store_timeout;
	if (cmd->err || lg_redis_push(gw, rd, &e)) {
		rd->failed++;
		if (fn) fn(gw, arg, NULL, 0, "out of memory (or too many store calls waiting)");
		return;
	}
	lg_buf_add(&rd->c->out, lg_buf_data(cmd), lg_buf_used(cmd));
}

/* admit: the plan and the request's reservation in this process's books;
 * then one batch to the store, written with the loop's other calls and
 * answered in one round trip: the shared affinity map's entry for the
 * prompt (when this process has none), the key's rpm, tpm and
 * max_concurrency (one script), its budget (one script). */
static void lg_st_redis_admit(struct lg_req *r)
{
	struct llmgw *gw = r->gw;
	struct lg_redis *rd;
	struct lg_stjob *j;
	struct lg_buf b;
	char msg[1024];
	int retry = 0, status, lim, bud, aff;
	lg_lock(gw);
	if (!(status = lg_route_plan(r, msg, sizeof msg)))
		status = lg_acct_admit(r, msg, sizeof msg, &retry, !r->cfg->store_kind);
	lg_unlock(gw);
	bud = r->key && r->key->budget > 0;
	lim = r->key && (r->key->rpm || r->key->tpm || r->key->max_concurrency);
	aff = r->aff_hash && !r->aff_hit && r->nplan > 1;
	if (status || !r->cfg->store_kind || !(lim || bud || aff)) {
		lg_st_admitted(r, status, retry, msg);
		return;
	}
	if (!(rd = lg_redis_cur(gw)) || !(j = (struct lg_stjob *)calloc(1, sizeof *j))) {
		lg_st_redis_unadmit(r);
		lg_st_admitted(r, 503, 1, "the state store: out of memory");
		return;
	}
	j->r = r;
	j->res = r->reserved;
	j->pending = 1; /* this call's own, dropped at the end: replies may come at once */
	j->lim = j->bud = 1;
	lg_cpy(j->id, sizeof j->id, r->id);
	lg_cpy(j->store, sizeof j->store, r->cfg->store_name);
	lg_cpy(j->prefix, sizeof j->prefix, r->cfg->store_prefix);
	if (r->key) lg_cpy(j->kname, sizeof j->kname, r->key->name);
	r->st_job = j;
	lg_buf_init(&b, 0);
	if (aff) {
		char k[240];
		snprintf(k, sizeof k, "%sa:%08x", r->cfg->store_prefix, (unsigned)r->aff_hash);
		lg_redis_cmd(&b, 2);
		lg_redis_argz(&b, "GET");
		lg_redis_argz(&b, k);
		j->pending++;
		lg_redis_call(gw, rd, &b, lg_st_redis_affined, j);
		b.off = b.len = 0;
	}
	if (lim) {
		char k[240];
		const struct lg_key *key = r->key;
		lg_redis_argz(&b, "3");
		snprintf(k, sizeof k, "%srpm:%s", r->cfg->store_prefix, key->name);
		lg_redis_argz(&b, k);
		snprintf(k, sizeof k, "%sconc:%s", r->cfg->store_prefix, key->name);
		lg_redis_argz(&b, k);
		snprintf(k, sizeof k, "%stpm:%s", r->cfg->store_prefix, key->name);
		lg_redis_argz(&b, k);
		lg_redis_argz(&b, r->id);
		lg_redis_argi(&b, lg_wall_ms());
		lg_redis_argi(&b, key->rpm);
		lg_redis_argi(&b, key->tpm);
		lg_redis_argi(&b, key->max_concurrency);
		lg_redis_argi(&b, r->cfg->store_lease);
		j->pending++;
		j->lim_sent = 1;
		lg_redis_script(gw, rd, LG_SCR_LIMIT, &b, 10, lg_st_redis_limited, j);
		b.off = b.len = 0;
	}
	if (bud) {
		lg_st_redis_keys(r, r->cfg, j);
		j->pending++;
		j->bud_sent = 1;
		lg_st_redis_send_admit(gw, rd, j); /* with the epoch's arguments */
	}
	lg_buf_free(&b);
	lg_st_redis_join(gw, j);
}

static void lg_st_redis_record(struct lg_req *r, struct lg_redis *rd);

/* settle: this process's books (metrics, ledger, the ring) as lg_st_local
 * does; then, when the store holds a reservation, the real cost in its
 * place; the key's lease back and its tokens against tpm; the request's
 * record for /v1/generation on any instance. */
static void lg_st_redis_settle(struct lg_req *r)
{
	int held = r->st_held, lim = r->st_lim;
	struct lg_stjob j;
	struct lg_redis *rd;
	double cost = r->usage.cost;
	struct lg_kstate *ks = r->ks;
	r->st_held = r->st_lim = 0;
	lg_acct_settle(r);
	if (!r->cfg->store_kind) return;
	rd = lg_redis_cur(r->gw);
	if (rd && LG_EP_ASKS_MODEL(r->ep)) lg_st_redis_record(r, rd);
	if (!r->key) return;
	if (rd && lim)
		lg_st_redis_send_ldone(r->gw, rd, r->cfg->store_prefix, r->key->name, r->id,
		                       r->usage.prompt + r->usage.completion, 0);
	if (!held || !ks) return;
	if (held == 2 || !rd || rd->state == LG_RS_DOWN || !rd->c) { /* the store does not get it now: later */
		if (cost > 0) {
			lg_lock(r->gw);
			ks->st_out += cost;
			lg_unlock(r->gw);
		}
		if (held == 2 || !rd) return;
	}
	memset(&j, 0, sizeof j);
	lg_st_redis_keys(r, r->cfg, &j);
	lg_st_redis_send_settle(r->gw, rd, &j, cost > 0 ? cost : 0);
}

/* cancel: the answer admit waits for will find no request (and give back
 * what it reserved). */
static void lg_st_redis_cancel(struct lg_req *r)
{
	if (r->st_job) r->st_job->r = NULL;
	if (r->st_vjob) r->st_vjob->r = NULL;
	r->st_job = NULL;
	r->st_vjob = NULL;
}

/* The request's record, for GET /v1/generation on any instance: the
 * answer as this instance gives it, behind the key's name, kept for
 * [store] records. */
static void lg_st_redis_record(struct lg_req *r, struct lg_redis *rd)
{
	struct lg_acct *a = r->gw->acct;
	struct lg_gen g;
	struct lg_buf v, b;
	char k[240];
	if (!a || !(r->cfg->store_records > 0)) return;
	lg_lock(r->gw);
	g = a->ring[r->seq % LG_RING];
	lg_unlock(r->gw);
	if (g.seq != r->seq || strcmp(g.id, r->id) != 0) return;
	lg_buf_init(&v, 0);
	lg_buf_addz(&v, g.key);
	lg_buf_addc(&v, '\n');
	lg_acct_gen_json(&v, &g);
	snprintf(k, sizeof k, "%sg:%s", r->cfg->store_prefix, r->id);
	lg_buf_init(&b, 0);
	lg_redis_cmd(&b, 5);
	lg_redis_argz(&b, "SET");
	lg_redis_argz(&b, k);
	lg_redis_arg(&b, lg_buf_data(&v), lg_buf_used(&v));
	lg_redis_argz(&b, "PX");
	lg_redis_argi(&b, r->cfg->store_records);
	if (!v.err) lg_redis_call(r->gw, rd, &b, NULL, NULL);
	lg_buf_free(&v);
	lg_buf_free(&b);
}

/* view's answer from the store: fn writes the response with it (or, when
 * the store failed, from this instance's own books). */
static void lg_st_redis_viewed(struct llmgw *gw, void *arg, const struct lg_rv *v, int nv, const char *err)
{
	struct lg_stvjob *vj = (struct lg_stvjob *)arg;
	struct lg_req *r = vj->r;
	struct lg_stview sv;
	void (*fn)(struct lg_req *r);
	if (!r) {
		free(vj);
		return;
	}
	r->st_vjob = NULL;
	memset(&sv, 0, sizeof sv);
	if (!err && nv && v[0].type == LG_RV_BULK) { /* a generation record */
		sv.rec = v[0].p;
		sv.reclen = v[0].len;
	} else if (!err && nv >= 7 && v[0].type == LG_RV_ARR && v[0].n == 6) { /* key info */
		char t[40];
		int i;
		for (i = 0; i < 2; i++) {
			double d = 0;
			if (v[1 + i].type == LG_RV_BULK) {
				snprintf(t, sizeof t, "%.*s", (int)LG_MIN(v[1 + i].len, (size_t)39), v[1 + i].p);
				d = strtod(t, NULL);
			}
			if (i == 0)
				sv.spend = d;
			else
				sv.held = d < 1e-12 ? 0 : d;
		}
		sv.rpm_used = v[3].i, sv.leases = v[4].i, sv.tpm_used = v[5].i, sv.insts = v[6].i;
		sv.fleet = 1;
	}
	fn = vj->fn;
	free(vj);
	r->st_view = &sv;
	lg_lock(gw);
	lg_st_viewed(r, fn);
	lg_unlock(gw);
	r->st_view = NULL;
}

/* view: /v1/key reads the key's fleet-wide figures and /v1/generation a
 * record this instance does not have, from the store (one call); the
 * rest as lg_st_local does. */
static void lg_st_redis_view(struct lg_req *r, void (*fn)(struct lg_req *r))
{
	struct llmgw *gw = r->gw;
	struct lg_redis *rd = r->cfg->store_kind ? lg_redis_cur(gw) : NULL;
	struct lg_stvjob *vj;
	struct lg_buf b;
	char k[240];
	int scr = 0;
	lg_buf_init(&b, 0);
	if (rd && r->ep == LG_EP_GEN) { /* only when the local ring does not have it */
		const char *q = r->query ? strstr(r->query, "id=") : NULL;
		char id[48];
		size_t n = 0;
		unsigned long long seq = 0;
		struct lg_acct *a = gw->acct;
		int local = 0;
		if (q) {
			q += 3;
			while (q[n] && q[n] != '&' && n + 1 < sizeof id) id[n] = q[n], n++;
		}
		id[n] = 0;
		if (!n || sscanf(id, "gen-%llx-", &seq) != 1) rd = NULL;
		lg_lock(gw);
		if (rd && a) local = a->ring[seq % LG_RING].seq == seq && strcmp(a->ring[seq % LG_RING].id, id) == 0;
		lg_unlock(gw);
		if (local) rd = NULL;
		if (rd) {
			snprintf(k, sizeof k, "%sg:%s", r->cfg->store_prefix, id);
			lg_redis_cmd(&b, 2);
			lg_redis_argz(&b, "GET");
			lg_redis_argz(&b, k);
		}
	} else if (rd && r->ep == LG_EP_KEY && r->key) { /* KEYS budget hash, rpm, conc, tpm, insts; ARGV now */
		struct lg_stjob j;
		const char *pf = r->cfg->store_prefix, *kn = r->key->name;
		memset(&j, 0, sizeof j);
		lg_st_redis_keys(r, r->cfg, &j);
		lg_redis_argz(&b, "5");
		lg_redis_argz(&b, j.k[0]);
		snprintf(k, sizeof k, "%srpm:%s", pf, kn);
		lg_redis_argz(&b, k);
		snprintf(k, sizeof k, "%sconc:%s", pf, kn);
		lg_redis_argz(&b, k);
		snprintf(k, sizeof k, "%stpm:%s", pf, kn);
		lg_redis_argz(&b, k);
		snprintf(k, sizeof k, "%sinsts", pf);
		lg_redis_argz(&b, k);
		lg_redis_argi(&b, lg_wall_ms());
		scr = 1;
	} else {
		rd = NULL;
	}
	if (!rd || !(vj = (struct lg_stvjob *)calloc(1, sizeof *vj))) {
		lg_buf_free(&b);
		lg_st_local_view(r, fn);
		return;
	}
	vj->r = r;
	vj->fn = fn;
	r->st_vjob = vj;
	if (scr)
		lg_redis_script(gw, rd, LG_SCR_KEYINFO, &b, 7, lg_st_redis_viewed, vj);
	else
		lg_redis_call(gw, rd, &b, lg_st_redis_viewed, vj);
	lg_buf_free(&b);
}

/* Every lease/3, each loop renews the max_concurrency leases of its
 * requests in flight, all in one call: a lease expires only when its
 * instance stopped renewing it (killed, cut off from the store). */
static void lg_redis_leases(struct llmgw *gw, struct lg_timer *t)
{
	struct lg_redis *rd = gw->redis;
	struct lg_req *r;
	struct lg_buf keys, ids, b;
	char k[240];
	int n = 0;
	if (!rd) return;
	lg_timer_set(gw, t, LG_MAX(rd->cfg->store_lease / 3, (int64_t)100));
	if (rd->state != LG_RS_UP) return;
	lg_buf_init(&keys, 0);
	lg_buf_init(&ids, 0);
	for (r = gw->reqs; r; r = r->next)
		if (r->st_lim && r->key && r->key->max_concurrency && !r->finished) {
			snprintf(k, sizeof k, "%sconc:%s", r->cfg->store_prefix, r->key->name);
			lg_redis_argz(&keys, k);
			lg_redis_argz(&ids, r->id);
			n++;
		}
	if (n) {
		lg_buf_init(&b, 0);
		lg_redis_argi(&b, n);
		lg_buf_add(&b, lg_buf_data(&keys), lg_buf_used(&keys));
		lg_redis_argi(&b, lg_wall_ms() + rd->cfg->store_lease);
		lg_buf_add(&b, lg_buf_data(&ids), lg_buf_used(&ids));
		lg_redis_argi(&b, 2 * rd->cfg->store_lease);
		if (!keys.err && !ids.err) lg_redis_script(gw, rd, LG_SCR_LEASE, &b, 2 * n + 3, lg_st_redis_settled, NULL);
		lg_buf_free(&b);
	}
	lg_buf_free(&keys);
	lg_buf_free(&ids);
}

/* report: this process's health as lg_st_local does, and the outcome into
 * the target's shared hash (breaker, smoothed TTFT and tokens/s). */
static void lg_st_redis_report(struct lg_req *r, const struct lg_cand *cd, int ok)
{
	struct lg_redis *rd;
	struct lg_buf b;
	char k[300];
	double ttft = 0, tps = 0;
	lg_st_local_report(r, cd, ok);
	if (ok < 0 || !cd->h || !r->cfg->store_kind || !(rd = lg_redis_cur(r->gw)) || rd->state != LG_RS_UP) return;
	if (ok > 0) {
		int64_t now = r->gw->now, first = r->t_att_first ? r->t_att_first : now;
		double gen = (double)(now - first) / 1000.0;
		ttft = (double)(first - r->t_att);
		if (r->usage.completion > 0)
			tps = (double)r->usage.completion / (gen > 0.001 ? gen : (ttft > 0 ? ttft / 1000.0 : 0.001));
	}
	snprintf(k, sizeof k, "%sh:%s", r->cfg->store_prefix, cd->h->id);
	lg_buf_init(&b, 0);
	lg_redis_argz(&b, "1");
	lg_redis_argz(&b, k);
	lg_redis_argi(&b, lg_wall_ms());
	lg_redis_argz(&b, ok > 0 ? "1" : "0");
	lg_redis_argd(&b, ttft);
	lg_redis_argd(&b, tps);
	lg_redis_argi(&b, LG_BREAKER_FAILS);
	lg_redis_argi(&b, LG_BREAKER_COOL);
	lg_redis_script(r->gw, rd, LG_SCR_HREPORT, &b, 8, lg_st_redis_settled, NULL);
	lg_buf_free(&b);
}

/* The shared health of the targets this gateway uses, into its own
 * entries (what the plan and take read): the breaker as the store has it
 * (one instance holds the probe of an open one whose cool-down is over;
 * the others keep skipping the target), the smoothed figures. */
static void lg_redis_healthed(struct llmgw *gw, void *arg, const struct lg_rv *v, int nv, const char *err)
{
	struct lg_health **hs = (struct lg_health **)arg;
	const char *p, *end;
	int i = 0;
	int64_t wall = lg_wall_ms();
	if (err || !nv || v[0].type != LG_RV_BULK) {
		free(hs);
		return;
	}
	p = v[0].p, end = v[0].p + v[0].len;
	lg_lock(gw);
	while (hs[i] && p < end) {
		const char *nl = (const char *)memchr(p, '\n', (size_t)(end - p));
		char line[160];
		int st = 0, fails = 0, probe = 0;
		long long until = 0;
		double ttft = 0, tps = 0;
		struct lg_health *h = hs[i++];
		size_t n = (size_t)((nl ? nl : end) - p);
		lg_cpy(line, sizeof line, "");
		if (n < sizeof line) memcpy(line, p, n), line[n] = 0;
		p = nl ? nl + 1 : end;
		if (sscanf(line, "%d %d %lld %lf %lf %d", &st, &fails, &until, &ttft, &tps, &probe) != 6) continue;
		if (ttft > 0) h->ttft = ttft;
		if (tps > 0) h->tps = tps;
		if (h->probing) continue; /* this instance's probe is out: its answer decides */
		if (st == 0) {
			h->state = LG_BRK_CLOSED;
			h->fails = fails;
			h->cooldown = 0;
		} else {
			int64_t left = (int64_t)until - wall;
			h->state = LG_BRK_OPEN;
			h->fails = LG_MAX(h->fails, fails);
			/* this instance probes now; the others wait for its answer (read again in a second) */
			h->open_until = probe ? gw->now : gw->now + LG_MAX(left, (int64_t)1500);
		}
	}
	lg_unlock(gw);
	free(hs);
}

static void lg_redis_health(struct llmgw *gw, struct lg_redis *rd)
{
	struct lg_health **hs;
	struct lg_buf b, keys;
	char k[300];
	int n = 0, cap = 64, i;
	if (!gw->rs || rd->state != LG_RS_UP || !(hs = (struct lg_health **)malloc((size_t)(cap + 1) * sizeof *hs))) return;
	lg_buf_init(&keys, 0);
	lg_lock(gw);
	for (i = 0; i < 256; i++) {
		struct lg_health *h;
		for (h = gw->rs->tab[i]; h; h = h->next) {
			if (!strchr(h->id, '/')) continue; /* a provider's entry: its concurrency stays this instance's */
			if (n == cap) {
				struct lg_health **nh = (struct lg_health **)realloc(hs, (size_t)(2 * cap + 1) * sizeof *hs);
				if (!nh) break;
				hs = nh, cap *= 2;
			}
			hs[n++] = h;
			snprintf(k, sizeof k, "%sh:%s", rd->cfg->store_prefix, h->id);
			lg_redis_argz(&keys, k);
		}
	}
	lg_unlock(gw);
	hs[n] = NULL;
	if (!n || keys.err) {
		free(hs);
		lg_buf_free(&keys);
		return;
	}
	lg_buf_init(&b, 0);
	lg_redis_argi(&b, n);
	lg_buf_add(&b, lg_buf_data(&keys), lg_buf_used(&keys));
	lg_redis_argi(&b, lg_wall_ms());
	lg_redis_argz(&b, rd->cfg->store_instance);
	lg_redis_argi(&b, 10000);
	lg_redis_script(gw, rd, LG_SCR_HREAD, &b, n + 4, lg_redis_healthed, hs);
	lg_buf_free(&b);
	lg_buf_free(&keys);
}

/* remember: the prompt's target in this process and in the store, for ms. */
static void lg_st_redis_remember(struct lg_req *r, const char *target, int64_t ms)
{
	struct lg_redis *rd;
	struct lg_buf b;
	char k[240];
	lg_st_local_remember(r, target, ms);
	if (!r->cfg->store_kind || !(rd = lg_redis_cur(r->gw)) || rd->state != LG_RS_UP) return;
	snprintf(k, sizeof k, "%sa:%08x", r->cfg->store_prefix, (unsigned)r->aff_hash);
	lg_buf_init(&b, 0);
	lg_redis_cmd(&b, 5);
	lg_redis_argz(&b, "SET");
	lg_redis_argz(&b, k);
	lg_redis_argz(&b, target);
	lg_redis_argz(&b, "PX");
	lg_redis_argi(&b, ms > 0 ? ms : 1);
	lg_redis_call(r->gw, rd, &b, NULL, NULL);
	lg_buf_free(&b);
}

/* What /metrics says about the store. */
static void lg_st_redis_metrics(struct llmgw *gw, struct lg_buf *b)
{
	struct llmgw *first = gw->sh ? gw->sh->w[0] : gw;
	struct lg_redis *rd = gw->redis;
	if (!gw->cfg || !gw->cfg->store_kind) return;
	lg_buf_printf(b, "# HELP llmgw_store_up Whether this loop's connection to the state store works.\n"
	                 "# TYPE llmgw_store_up gauge\nllmgw_store_up %d\n"
	                 "# HELP llmgw_store_instances Gateway instances whose heartbeat the store saw in the last 3 s.\n"
	                 "# TYPE llmgw_store_instances gauge\nllmgw_store_instances %d\n",
	              rd ? lg_gauge_get(&rd->up) : 0, first ? lg_gauge_get(&first->store_inst) : 0);
}

static const struct lg_store lg_st_redis = {"redis", lg_st_redis_admit, lg_st_local_take, lg_st_redis_report,
                                            lg_st_redis_remember, lg_acct_charge, lg_st_redis_settle,
                                            lg_st_redis_view, lg_st_redis_cancel};

/* The store a configuration asks for; the loop's client dropped, or
 * given the new settings (a changed url: a new connection). The client
 * itself is made by the loop that uses it (lg_redis_tick). */
static void lg_st_install(struct llmgw *gw, struct lg_cfg *c)
{
	if (c->store_kind)
		gw->st = &lg_st_redis;
	else if (gw->st == &lg_st_redis) /* another store (an embedder's, a test's) stays */
		gw->st = &lg_st_local;
	if (!c->store_kind)
		lg_redis_free(gw);
	else if (gw->redis)
		lg_redis_get(gw, c);
}

/* Each loop iteration, before poll and after the dispatch: the client
 * made once the loop runs, and what requests queued written out. */
static void lg_redis_tick(struct llmgw *gw)
{
	if (!gw->redis && gw->cfg && gw->cfg->store_kind && gw->running) lg_redis_get(gw, gw->cfg);
	lg_redis_flush(gw);
}

/* ===== 14. Dashboard and admin JSON ==================================== */

/* GET /ui is one page for the box's owner (HTML, CSS and JS below, no other assets), and the
 * JSON it reads is under /admin/, for scripts too. All of it needs admin_key: a bearer header,
 * or the cookie POST /ui/login sets (an HMAC of an expiry under the admin key: the key itself
 * never leaves, and a new admin key ends every session). Every answer carries
 * Cache-Control: no-store and a Content-Security-Policy that allows only this origin's own
 * script and style files; the page writes every value as text (textContent), never as HTML.
 *
 * The time series: per key and per model (and one for all), three rings of buckets - the last
 * hour by minute, the last day by 10 minutes, the last 30 days by day - each bucket requests,
 * errors, tokens and USD. A bucket is 24 bytes, a series 234 buckets (5.6 KB); at most
 * LLMGW_DASH_SERIES series, the rest counted under "(other)". With state_dir they are saved to
 * state_dir/series (text, once a minute at most and at exit) and read back at start. */

#ifndef LLMGW_DASH_SERIES
#define LLMGW_DASH_SERIES 256 /* key and model series kept for the dashboard (5.6 KB each) */
#endif
#define LG_DASH_RES 3
static const int lg_dash_len[LG_DASH_RES] = {60, 144, 30};
static const int64_t lg_dash_step[LG_DASH_RES] = {60000, 600000, 86400000};
static const char lg_dash_rname[LG_DASH_RES][8] = {"hour", "day", "month"};
#define LG_DASH_SESSION_MS (12 * 3600000) /* a login lasts this long */

struct lg_dash_bkt {
	double usd;
	uint32_t requests, errors, tokens, pad;
};

struct lg_dash_ser {
	char name[96];
	int kind; /* 0: all, 1: key, 2: model */
	int64_t last[LG_DASH_RES]; /* the newest bucket written: wall ms / step */
	struct lg_dash_bkt b[60 + 144 + 30];
};

struct lg_dash {
	struct lg_dash_ser *s;
	int ns, loaded;
	int64_t saved; /* wall ms of the last save */
	int64_t t0;    /* when this gateway started (wall ms) */
	int64_t reload_at;
	int reload_ok, reloads;
	char reload_err[512];
};

static struct lg_dash *lg_dash_of(struct llmgw *gw)
{
	struct llmgw *o = gw->sh ? gw->sh->w[0] : gw;
	if (!o->dash) {
		o->dash = (struct lg_dash *)calloc(1, sizeof *o->dash);
		if (o->dash) o->dash->t0 = lg_wall_ms(), o->dash->reload_ok = -1;
	}
	return o->dash;
}

static struct lg_dash_bkt *lg_dash_bkt(struct lg_dash_ser *s, int res)
{
	int i, off = 0;
	for (i = 0; i < res; i++) off += lg_dash_len[i];
	return s->b + off;
}

static struct lg_dash_ser *lg_dash_find(struct lg_dash *d, int kind, const char *name, int make)
{
	int i;
	for (i = 0; i < d->ns; i++)
		if (d->s[i].kind == kind && strcmp(d->s[i].name, name) == 0) return &d->s[i];
	if (!make) return NULL;
	if (d->ns >= LLMGW_DASH_SERIES + 1) { /* full: into "(other)" of its kind, kept free for that */
		for (i = 0; i < d->ns; i++)
			if (d->s[i].kind == kind && strcmp(d->s[i].name, "(other)") == 0) return &d->s[i];
		return NULL;
	}
	if (d->ns % 16 == 0) {
		struct lg_dash_ser *ns = (struct lg_dash_ser *)realloc(d->s, (size_t)(d->ns + 16) * sizeof *ns);
		if (!ns) return NULL;
		d->s = ns;
	}
	memset(&d->s[d->ns], 0, sizeof d->s[d->ns]);
	d->s[d->ns].kind = kind;
	lg_cpy(d->s[d->ns].name, sizeof d->s[d->ns].name, d->ns >= LLMGW_DASH_SERIES ? "(other)" : name);
	return &d->s[d->ns++];
}

/* The bucket of time wall in ring res of s, the buckets skipped since the last write cleared. */
static struct lg_dash_bkt *lg_dash_at(struct lg_dash_ser *s, int res, int64_t wall)
{
	int64_t b = wall / lg_dash_step[res], k;
	int n = lg_dash_len[res];
	struct lg_dash_bkt *r = lg_dash_bkt(s, res);
	if (b > s->last[res]) {
		for (k = LG_MAX(s->last[res] + 1, b - n + 1); k <= b; k++) memset(&r[k % n], 0, sizeof r[0]);
		s->last[res] = b;
	}
	if (b <= s->last[res] - n) return NULL; /* older than the ring */
	return &r[b % n];
}

static void lg_dash_add(struct lg_dash_ser *s, int64_t wall, double usd, int64_t tokens, int err)
{
	int res;
	for (res = 0; s && res < LG_DASH_RES; res++) {
		struct lg_dash_bkt *b = lg_dash_at(s, res, wall);
		if (!b) continue;
		b->requests++;
		b->errors += err ? 1u : 0u;
		b->tokens += (uint32_t)LG_MIN(tokens, (int64_t)UINT32_MAX);
		b->usd += usd;
	}
}

static void lg_dash_save(struct llmgw *gw, struct lg_dash *d);
static void lg_dash_load(struct llmgw *gw, struct lg_dash *d);

/* A request that asked a model ended (lg_srv_finish): into its key's, its model's and the
 * total series. */
static void lg_dash_record(struct lg_req *r)
{
	struct lg_dash *d;
	int64_t wall = lg_wall_ms();
	const char *model = r->served ? r->served->model : r->model_req;
	int err = r->status >= 400;
	int64_t tok = r->usage.prompt + r->usage.completion;
	if (!LG_EP_ASKS_MODEL(r->ep)) return;
	lg_lock(r->gw);
	if ((d = lg_dash_of(r->gw))) {
		if (!d->loaded) lg_dash_load(r->gw, d);
		lg_dash_add(lg_dash_find(d, 0, "", 1), wall, r->usage.cost, tok, err);
		if (r->key) lg_dash_add(lg_dash_find(d, 1, r->key->name, 1), wall, r->usage.cost, tok, err);
		if (model && *model) lg_dash_add(lg_dash_find(d, 2, model, 1), wall, r->usage.cost, tok, err);
		if (wall - d->saved >= 60000) lg_dash_save(r->gw, d);
	}
	lg_unlock(r->gw);
}

/* A reload's outcome, for /admin/overview. */
static void lg_dash_reloaded(struct llmgw *gw, int ok, const char *err)
{
	struct lg_dash *d;
	lg_lock(gw);
	if ((d = lg_dash_of(gw))) {
		d->reload_at = lg_wall_ms();
		d->reload_ok = ok;
		d->reloads++;
		lg_cpy(d->reload_err, sizeof d->reload_err, ok ? "" : err);
	}
	lg_unlock(gw);
}

/* state_dir/series: "S kind name" then "B res index requests errors tokens usd" lines. */
static void lg_dash_save(struct llmgw *gw, struct lg_dash *d)
{
	const char *dir = gw->cfg ? gw->cfg->state_dir : NULL;
	char path[4200], tmp[4220];
	FILE *f;
	int i, res, k;
	d->saved = lg_wall_ms();
	if (!dir || !*dir) return;
	snprintf(path, sizeof path, "%s/series", dir);
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	if (!(f = fopen(tmp, "w"))) return;
	fprintf(f, "llmgw-series 1\n");
	for (i = 0; i < d->ns; i++) {
		struct lg_dash_ser *s = &d->s[i];
		fprintf(f, "S %d %s\n", s->kind, s->name);
		for (res = 0; res < LG_DASH_RES; res++) {
			int n = lg_dash_len[res];
			struct lg_dash_bkt *b = lg_dash_bkt(s, res);
			for (k = 0; k < n; k++) {
				int64_t idx = s->last[res] - k;
				const struct lg_dash_bkt *x = &b[idx % n];
				if (idx < 0 || !x->requests) continue;
				fprintf(f, "B %d %lld %lu %lu %lu %.17g\n", res, (long long)idx, (unsigned long)x->requests,
				        (unsigned long)x->errors, (unsigned long)x->tokens, x->usd);
			}
		}
	}
	if (fclose(f) == 0) rename(tmp, path);
	else remove(tmp);
}

static void lg_dash_load(struct llmgw *gw, struct lg_dash *d)
{
	const char *dir = gw->cfg ? gw->cfg->state_dir : NULL;
	char path[4200], line[256];
	FILE *f;
	struct lg_dash_ser *s = NULL;
	int64_t now = lg_wall_ms();
	d->loaded = 1;
	if (!dir || !*dir) return;
	snprintf(path, sizeof path, "%s/series", dir);
	if (!(f = fopen(path, "r"))) return;
	if (!fgets(line, sizeof line, f) || strcmp(line, "llmgw-series 1\n") != 0) {
		fclose(f);
		return;
	}
	while (fgets(line, sizeof line, f)) {
		int kind, res;
		long long idx;
		unsigned long rq, er, tk;
		double usd;
		char *nl = strchr(line, '\n');
		if (nl) *nl = 0;
		if (line[0] == 'S' && sscanf(line, "S %d", &kind) == 1 && line[1] == ' ' && line[2] && line[3] == ' ') {
			s = lg_dash_find(d, kind, line + 4, 1);
		} else if (s && sscanf(line, "B %d %lld %lu %lu %lu %lg", &res, &idx, &rq, &er, &tk, &usd) == 6 &&
		           res >= 0 && res < LG_DASH_RES && idx >= 0) {
			int64_t wall = (int64_t)idx * lg_dash_step[res];
			struct lg_dash_bkt *b;
			if (wall > now || (now - wall) / lg_dash_step[res] >= lg_dash_len[res]) continue;
			if (s->last[res] < now / lg_dash_step[res]) lg_dash_at(s, res, now); /* the ring up to now */
			if ((b = lg_dash_at(s, res, wall))) {
				b->requests += (uint32_t)rq;
				b->errors += (uint32_t)er;
				b->tokens += (uint32_t)tk;
				b->usd += usd;
			}
		}
	}
	fclose(f);
}

static void lg_dash_free(struct llmgw *gw)
{
	if (!gw->dash) return;
	if (gw->dash->ns) lg_dash_save(gw, gw->dash);
	free(gw->dash->s);
	free(gw->dash);
	gw->dash = NULL;
}

/* --- who may: the admin key or the login cookie ------------------------ */

/* The login cookie's value for an expiry: "EXP.HMAC(admin_key, EXP)". */
static void lg_dash_token(const char *ak, long long exp, char *out, size_t cap)
{
	char msg[64], hx[65];
	unsigned char mac[32];
	snprintf(msg, sizeof msg, "llmgw-ui %lld", exp);
	lg_hmac_sha256(ak, strlen(ak), msg, strlen(msg), mac);
	lg_hex32(mac, hx);
	snprintf(out, cap, "%lld.%s", exp, hx);
}

/* Does the request carry a live login cookie for the current admin key? */
static int lg_dash_cookie_ok(struct llmgw *gw, const struct lg_http *h)
{
	const char *ak = gw->cfg->admin_key;
	lg_str c = lg_http_get(h, "cookie");
	size_t i = 0;
	if (!ak || !*ak) return 0;
	while (i < c.n) {
		size_t st, e;
		while (i < c.n && (c.p[i] == ' ' || c.p[i] == ';')) i++;
		st = i;
		while (i < c.n && c.p[i] != ';') i++;
		e = i;
		if (e - st > 9 && memcmp(c.p + st, "llmgw_ui=", 9) == 0) {
			char want[96], got[96];
			long long exp = 0;
			lg_cpy(got, sizeof got, "");
			if (e - st - 9 < sizeof got) {
				memcpy(got, c.p + st + 9, e - st - 9);
				got[e - st - 9] = 0;
			}
			if (sscanf(got, "%lld.", &exp) != 1 || exp * 1000 < lg_wall_ms()) continue;
			lg_dash_token(ak, exp, want, sizeof want);
			if (strlen(want) == strlen(got) &&
			    lg_ct_eq((const unsigned char *)want, (const unsigned char *)got, strlen(want)))
				return 1;
		}
	}
	return 0;
}

#define LG_DASH_CSP                                                                                        \
	"Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " \
	"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'\r\n"
/* every dashboard and /admin/ answer carries these */
#define LG_DASH_HDRS                                                                                       \
	"Cache-Control: no-store\r\n" LG_DASH_CSP "X-Content-Type-Options: nosniff\r\n"                      \
	"Referrer-Policy: no-referrer\r\nX-Frame-Options: DENY\r\n"

static void lg_dash_send(struct lg_req *r, int status, const char *ctype, const char *body, size_t n,
                         const char *more)
{
	char hx[1024];
	snprintf(hx, sizeof hx, "%s%s", LG_DASH_HDRS, more ? more : "");
	lg_resp_send(r, status, ctype, body, n, lg_arena_strn(&r->a, hx, strlen(hx)));
}

static void lg_dash_json_err(struct lg_req *r, int status, const char *msg)
{
	struct lg_buf b;
	lg_buf_init(&b, 0);
	lg_buf_addz(&b, "{\"error\":{\"message\":");
	lg_json_wz(&b, msg);
	lg_buf_printf(&b, ",\"code\":%d}}\n", status);
	lg_dash_send(r, status, "application/json", b.p ? b.p : "{}", b.p ? b.len : 2, NULL);
	lg_buf_free(&b);
}

/* The value of name in the request's query (URL-decoded into out); 0: absent. */
static int lg_dash_q(const struct lg_req *r, const char *name, char *out, size_t cap)
{
	const char *q = r->query ? r->query : "";
	size_t nl = strlen(name);
	out[0] = 0;
	if (*q == '?') q++;
	while (*q) {
		const char *e = strchr(q, '&');
		size_t len = e ? (size_t)(e - q) : strlen(q);
		if (len > nl && q[nl] == '=' && memcmp(q, name, nl) == 0) {
			size_t i, o = 0;
			for (i = nl + 1; i < len && o + 1 < cap; i++) {
				if (q[i] == '%' && i + 2 < len + 0 + 1 && lg_hexval(q[i + 1]) >= 0 && lg_hexval(q[i + 2]) >= 0) {
					out[o++] = (char)(lg_hexval(q[i + 1]) << 4 | lg_hexval(q[i + 2]));
					i += 2;
				} else
					out[o++] = q[i] == '+' ? ' ' : q[i];
			}
			out[o] = 0;
			return 1;
		}
		q += len + (e ? 1 : 0);
	}
	return 0;
}

static const char *lg_dash_brk(int state)
{
	return state == LG_BRK_OPEN ? "open" : state == LG_BRK_HALF ? "half-open" : "closed";
}

/* GET /admin/overview: version, uptime, config, the last reload, memory. */
static void lg_dash_overview(struct lg_req *r, struct lg_buf *b)
{
	struct llmgw *gw = r->gw;
	struct lg_dash *d = lg_dash_of(gw);
	long long rss = -1;
	FILE *f = fopen("/proc/self/statm", "r");
	if (f) {
		long long pages = 0, res = 0;
		if (fscanf(f, "%lld %lld", &pages, &res) == 2) rss = res * (long long)sysconf(_SC_PAGESIZE);
		fclose(f);
	}
	lg_buf_printf(b, "{\"version\":\"%s\",\"started_ms\":%lld,\"uptime_s\":%lld,\"config\":", LLMGW_VERSION,
	              (long long)(d ? d->t0 : 0), (long long)(d ? (lg_wall_ms() - d->t0) / 1000 : 0));
	lg_json_wz(b, gw->cfg_path ? gw->cfg_path : "");
	lg_buf_printf(b, ",\"providers\":%d,\"models\":%d,\"keys\":%d,\"store\":", r->cfg->nprov, r->cfg->nmodels,
	              r->cfg->nkeys);
	lg_json_wz(b, gw->st ? gw->st->name : "local");
	lg_buf_printf(b, ",\"workers\":%d,\"requests_served\":%llu,\"in_flight\":%d,\"reload\":{\"count\":%d,"
	                 "\"at_ms\":%lld,\"ok\":%s,\"error\":",
	              gw->sh ? gw->sh->nw : 1, gw->served, lg_gauge_get(&gw->nreqs), d ? d->reloads : 0,
	              (long long)(d ? d->reload_at : 0),
	              !d || d->reload_ok < 0 ? "null" : d->reload_ok ? "true" : "false");
	if (d && d->reload_ok == 0) lg_json_wz(b, d->reload_err);
	else lg_buf_addz(b, "null");
	lg_buf_addz(b, "},\"memory\":{\"rss_bytes\":");
	if (rss >= 0) lg_buf_printf(b, "%lld", rss);
	else lg_buf_addz(b, "null");
	lg_buf_printf(b, ",\"series\":%d,\"series_bytes\":%lu,\"series_max\":%d}}\n", d ? d->ns : 0,
	              (unsigned long)(d ? (size_t)d->ns * sizeof(struct lg_dash_ser) : 0), LLMGW_DASH_SERIES);
}

static int lg_dash_cmp(const void *x, const void *y)
{
	double a = ((const double *)x)[0], c = ((const double *)y)[0];
	return a < c ? 1 : a > c ? -1 : 0;
}

/* GET /admin/series?by=key|model|all&range=hour|day|month: the buckets, oldest first. */
static void lg_dash_series(struct lg_req *r, struct lg_buf *b)
{
	struct lg_dash *d = lg_dash_of(r->gw);
	char by[16], rg[16];
	int res = 0, kind = 1, i, k, n, first = 1, nsel = 0;
	int64_t cur = lg_wall_ms(), c0;
	double *ord;
	lg_dash_q(r, "by", by, sizeof by);
	lg_dash_q(r, "range", rg, sizeof rg);
	if (strcmp(by, "model") == 0) kind = 2;
	else if (strcmp(by, "all") == 0) kind = 0;
	for (i = 0; i < LG_DASH_RES; i++)
		if (strcmp(rg, lg_dash_rname[i]) == 0) res = i;
	n = lg_dash_len[res];
	c0 = cur / lg_dash_step[res];
	if (d && !d->loaded) lg_dash_load(r->gw, d);
	lg_buf_printf(b, "{\"by\":\"%s\",\"range\":\"%s\",\"step_s\":%lld,\"buckets\":%d,\"start_ms\":%lld,\"series\":[",
	              kind == 0 ? "all" : kind == 1 ? "key" : "model", lg_dash_rname[res],
	              (long long)(lg_dash_step[res] / 1000), n, (long long)((c0 - n + 1) * lg_dash_step[res]));
	ord = d && d->ns ? (double *)calloc((size_t)d->ns, 2 * sizeof(double)) : NULL;
	for (i = 0; ord && i < d->ns; i++) {
		struct lg_dash_ser *s = &d->s[i];
		struct lg_dash_bkt *bk = lg_dash_bkt(s, res);
		double tot = 0;
		if (s->kind != kind) continue;
		for (k = 0; k < n; k++) {
			int64_t idx = c0 - n + 1 + k;
			if (idx <= s->last[res] && idx > s->last[res] - n) tot += bk[idx % n].usd + 1e-300;
		}
		ord[2 * nsel] = tot, ord[2 * nsel + 1] = (double)i;
		nsel++;
	}
	if (ord) qsort(ord, (size_t)nsel, 2 * sizeof(double), lg_dash_cmp);
	for (i = 0; i < nsel; i++) {
		struct lg_dash_ser *s = &d->s[(int)ord[2 * i + 1]];
		struct lg_dash_bkt *bk = lg_dash_bkt(s, res);
		double usd = 0;
		unsigned long long tok = 0, rq = 0, er = 0;
		int f;
		for (k = 0; k < n; k++) {
			int64_t idx = c0 - n + 1 + k;
			if (idx <= s->last[res] && idx > s->last[res] - n) {
				usd += bk[idx % n].usd, tok += bk[idx % n].tokens;
				rq += bk[idx % n].requests, er += bk[idx % n].errors;
			}
		}
		lg_buf_addz(b, first ? "{\"name\":" : ",{\"name\":");
		first = 0;
		lg_json_wz(b, s->name);
		lg_buf_addz(b, ",\"usd_total\":");
		lg_json_wnum(b, usd);
		lg_buf_printf(b, ",\"tokens_total\":%llu,\"requests_total\":%llu,\"errors_total\":%llu", tok, rq, er);
		for (f = 0; f < 4; f++) {
			static const char fn[4][12] = {"usd", "tokens", "requests", "errors"};
			lg_buf_printf(b, ",\"%s\":[", fn[f]);
			for (k = 0; k < n; k++) {
				int64_t idx = c0 - n + 1 + k;
				const struct lg_dash_bkt *x = idx <= s->last[res] && idx > s->last[res] - n ? &bk[idx % n] : NULL;
				if (k) lg_buf_addz(b, ",");
				if (f == 0) lg_json_wnum(b, x ? x->usd : 0);
				else lg_buf_printf(b, "%lu", (unsigned long)(!x ? 0 : f == 1 ? x->tokens : f == 2 ? x->requests : x->errors));
			}
			lg_buf_addz(b, "]");
		}
		lg_buf_addz(b, "}");
	}
	free(ord);
	lg_buf_addz(b, "]}\n");
}

/* GET /admin/keys: every configured key's budget, spend, limits and their use (no secrets). */
static void lg_dash_keys(struct lg_req *r, struct lg_buf *b)
{
	int i;
	lg_buf_addz(b, "{\"keys\":[");
	for (i = 0; i < r->cfg->nkeys; i++) {
		const struct lg_key *k = r->cfg->keys[i];
		struct lg_kstate *ks = lg_acct_kstate(r->gw, k->name);
		int64_t reset = 0;
		if (!ks) continue;
		lg_acct_roll(ks, k, lg_wall_ms());
		lg_acct_refill(ks, k, r->gw->now);
		if (k->budget > 0) lg_acct_period(k->period, lg_wall_ms(), &reset);
		lg_buf_addz(b, i ? ",{\"name\":" : "{\"name\":");
		lg_json_wz(b, k->name);
		lg_buf_printf(b, ",\"budget\":{\"period\":\"%s\",\"limit\":", k->budget > 0 ? lg_period_names[k->period] : "none");
		lg_json_wnum(b, k->budget);
		lg_buf_addz(b, ",\"spend\":");
		lg_json_wnum(b, ks->spend);
		lg_buf_addz(b, ",\"reserved\":");
		lg_json_wnum(b, ks->reserved);
		lg_buf_printf(b, ",\"reset_ms\":%lld},\"total_usd\":", (long long)reset);
		lg_json_wnum(b, ks->total);
		lg_buf_printf(b, ",\"rpm\":{\"limit\":%ld,\"remaining\":%ld},\"tpm\":{\"limit\":%ld,\"remaining\":%ld},"
		                 "\"concurrency\":{\"limit\":%d,\"in_flight\":%d}}",
		              k->rpm, (long)LG_MAX(0.0, ks->rpm_tok), k->tpm, (long)LG_MAX(0.0, ks->tpm_tok),
		              k->max_concurrency, ks->inflight);
	}
	lg_buf_addz(b, "]}\n");
}

static void lg_dash_gen(struct lg_buf *b, const struct lg_gen *g, int full)
{
	int i;
	lg_buf_printf(b, "{\"seq\":%llu,\"id\":", (unsigned long long)g->seq);
	lg_json_wz(b, g->id);
	lg_buf_printf(b, ",\"created_ms\":%lld,\"key\":", (long long)g->created);
	lg_json_wz(b, g->key);
	lg_buf_addz(b, ",\"model\":");
	lg_json_wz(b, g->model);
	lg_buf_addz(b, ",\"provider\":");
	lg_json_wz(b, g->provider);
	lg_buf_addz(b, ",\"upstream_model\":");
	lg_json_wz(b, g->upstream);
	lg_buf_printf(b, ",\"status\":%d,\"stream\":%s,\"latency_ms\":%lld,\"ttft_ms\":%lld,\"prompt_tokens\":%lld,"
	                 "\"completion_tokens\":%lld,\"cached_tokens\":%lld,\"estimated\":%s,\"num_attempts\":%d,\"cost\":",
	              g->status, g->stream ? "true" : "false", (long long)g->ms, (long long)g->ttft, (long long)g->prompt,
	              (long long)g->completion, (long long)g->cached, g->estimated ? "true" : "false", g->natt);
	lg_json_wnum(b, g->cost);
	if (full) {
		lg_buf_addz(b, ",\"attempts\":[");
		for (i = 0; i < g->natt && i < 4; i++) {
			lg_buf_addz(b, i ? ",{\"provider\":" : "{\"provider\":");
			lg_json_wz(b, g->att[i].prov);
			lg_buf_printf(b, ",\"status\":%d,\"ms\":%lld}", g->att[i].status, (long long)g->att[i].ms);
		}
		lg_buf_addz(b, "]");
	}
	lg_buf_addz(b, "}");
}

/* GET /admin/requests?after=SEQ&limit=N&key=&model=&provider=&status=&stream=: the newest
 * requests first, only those after SEQ (a poll fetches only what is new). */
static void lg_dash_requests(struct lg_req *r, struct lg_buf *b)
{
	struct lg_acct *a = lg_acct_of(r->gw);
	char v[128], key[64], model[96], prov[64], st[16], sm[8];
	unsigned long long after = 0, latest = 0;
	int limit = 50, i, n = 0, hk, hm, hp, hs, hst;
	const struct lg_gen *sel[LG_RING];
	if (lg_dash_q(r, "after", v, sizeof v)) after = strtoull(v, NULL, 10);
	if (lg_dash_q(r, "limit", v, sizeof v)) limit = LG_MAX(1, LG_MIN(atoi(v), 500));
	hk = lg_dash_q(r, "key", key, sizeof key) && key[0];
	hm = lg_dash_q(r, "model", model, sizeof model) && model[0];
	hp = lg_dash_q(r, "provider", prov, sizeof prov) && prov[0];
	hs = lg_dash_q(r, "status", st, sizeof st) && st[0];
	hst = lg_dash_q(r, "stream", sm, sizeof sm) && sm[0];
	for (i = 0; a && i < LG_RING; i++) {
		const struct lg_gen *g = &a->ring[i];
		if (!g->id[0]) continue;
		if (g->seq > latest) latest = g->seq;
		if (g->seq <= after) continue;
		if ((hk && strcmp(g->key, key) != 0) || (hm && strcmp(g->model, model) != 0) ||
		    (hp && strcmp(g->provider, prov) != 0))
			continue;
		if (hs && !(strcmp(st, "error") == 0 ? g->status >= 400
		            : strcmp(st, "ok") == 0  ? g->status < 400
		                                     : g->status == atoi(st)))
			continue;
		if (hst && (!!g->stream) != (strcmp(sm, "1") == 0 || strcmp(sm, "true") == 0)) continue;
		sel[n++] = g;
	}
	/* newest first: a few hundred entries, insertion order by seq */
	for (i = 1; i < n; i++) {
		const struct lg_gen *x = sel[i];
		int j = i;
		while (j > 0 && sel[j - 1]->seq < x->seq) sel[j] = sel[j - 1], j--;
		sel[j] = x;
	}
	lg_buf_printf(b, "{\"latest\":%llu,\"kept\":%d,\"requests\":[", latest, LG_RING);
	for (i = 0; i < n && i < limit; i++) {
		if (i) lg_buf_addz(b, ",");
		lg_dash_gen(b, sel[i], 0);
	}
	lg_buf_addz(b, "]}\n");
}

/* GET /admin/generation?id=ID: one request's record, whichever key made it. */
static void lg_dash_generation(struct lg_req *r, struct lg_buf *b)
{
	struct lg_acct *a = lg_acct_of(r->gw);
	char id[48];
	unsigned long long seq = 0;
	const struct lg_gen *g;
	if (!lg_dash_q(r, "id", id, sizeof id) || sscanf(id, "gen-%llx-", &seq) != 1 || !a) {
		lg_dash_json_err(r, 400, "GET /admin/generation needs ?id=<the x-request-id of a request>");
		return;
	}
	g = &a->ring[seq % LG_RING];
	if (g->seq != seq || strcmp(g->id, id) != 0) {
		lg_dash_json_err(r, 404, "no such request among the recent ones");
		return;
	}
	lg_buf_addz(b, "{\"data\":");
	lg_dash_gen(b, g, 1);
	lg_buf_addz(b, "}\n");
}

/* GET /admin/health: each provider and target: breaker, error rate, TTFT, tokens/s, in flight. */
static void lg_dash_health(struct lg_req *r, struct lg_buf *b)
{
	struct lg_rstate *rs = r->gw->rs;
	int i, first = 1;
	lg_buf_addz(b, "{\"targets\":[");
	for (i = 0; rs && i < 256; i++) {
		const struct lg_health *h;
		for (h = rs->tab[i]; h; h = h->next) {
			if (!lg_route_health_live(r->cfg, h)) continue;
			lg_buf_addz(b, first ? "{\"id\":" : ",{\"id\":");
			first = 0;
			lg_json_wz(b, h->id);
			lg_buf_printf(b, ",\"target\":%s,\"breaker\":\"%s\",\"fails\":%d,\"ok\":%llu,\"errors\":%llu,\"error_rate\":",
			              strchr(h->id, '/') ? "true" : "false", lg_dash_brk(h->state), h->fails,
			              (unsigned long long)h->ok, (unsigned long long)h->bad);
			lg_json_wnum(b, h->ok + h->bad ? (double)h->bad / (double)(h->ok + h->bad) : 0);
			lg_buf_addz(b, ",\"ttft_ms\":");
			lg_json_wnum(b, h->ttft);
			lg_buf_addz(b, ",\"tokens_per_s\":");
			lg_json_wnum(b, h->tps);
			lg_buf_printf(b, ",\"in_flight\":%d,\"open_for_ms\":%lld}", h->inflight,
			              (long long)(h->state == LG_BRK_OPEN && h->open_until > r->gw->now ? h->open_until - r->gw->now : 0));
		}
	}
	lg_buf_addz(b, "]}\n");
}
/* GET /ui: the page (its script and style are /ui/app.js and /ui/app.css) */
static const char lg_dash_page[] =
    "<!doctype html>\n"
    "<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n"
    "<title>llmgw</title><link rel=\"stylesheet\" href=\"/ui/app.css\"></head>\n"
    "<body><header><b>llmgw</b> <span id=\"facts\"></span><form method=\"post\" action=\"/ui/logout\"><button>log out</button></form></header>\n"
    "<main>\n"
    "<section><h2>Spend and tokens</h2>\n"
    "<div class=\"bar\"><select id=\"by\"><option value=\"key\">per key</option><option value=\"model\">per model</option><option value=\"all\">all</option></select>\n"
    "<select id=\"range\"><option value=\"hour\">last hour, by minute</option><option value=\"day\">last day, by 10 minutes</option><option value=\"month\">last 30 days, by day</option></select>\n"
    "<select id=\"metric\"><option value=\"usd\">USD</option><option value=\"tokens\">tokens</option><option value=\"requests\">requests</option></select></div>\n"
    "<svg id=\"chart\" viewBox=\"0 0 800 220\" role=\"img\" aria-label=\"chart\"></svg>\n"
    "<table id=\"top\"><thead><tr><th>name</th><th>USD</th><th>tokens</th><th>requests</th><th>errors</th></tr></thead><tbody></tbody></table></section>\n"
    "<section><h2>Keys: budgets and limits</h2><table id=\"keys\"><thead><tr><th>key</th><th>budget</th><th>spend</th><th></th><th>resets</th><th>rpm left</th><th>tpm left</th><th>in flight</th></tr></thead><tbody></tbody></table></section>\n"
    "<section><h2>Providers and targets</h2><table id=\"health\"><thead><tr><th>id</th><th>breaker</th><th>error rate</th><th>ok</th><th>errors</th><th>TTFT ms</th><th>tokens/s</th><th>in flight</th></tr></thead><tbody></tbody></table></section>\n"
    "<section><h2>Requests</h2>\n"
    "<div class=\"bar\"><input id=\"f-key\" placeholder=\"key\"><input id=\"f-model\" placeholder=\"model\"><input id=\"f-provider\" placeholder=\"provider\">\n"
    "<select id=\"f-status\"><option value=\"\">any status</option><option value=\"ok\">ok</option><option value=\"error\">errors</option></select>\n"
    "<select id=\"f-stream\"><option value=\"\">streamed or not</option><option value=\"1\">streamed</option><option value=\"0\">not streamed</option></select></div>\n"
    "<table id=\"reqs\"><thead><tr><th>time</th><th>id</th><th>key</th><th>model</th><th>provider</th><th>status</th><th>stream</th><th>ms</th><th>tokens</th><th>USD</th></tr></thead><tbody></tbody></table>\n"
    "<pre id=\"detail\"></pre></section>\n"
    "</main><script src=\"/ui/app.js\"></script></body></html>\n";
/* the login form (%s: a message, HTML-escaped) */
static const char lg_dash_login_html[] =
    "<!doctype html>\n"
    "<html lang=\"en\"><head><meta charset=\"utf-8\"><title>llmgw: log in</title><link rel=\"stylesheet\" href=\"/ui/app.css\"></head>\n"
    "<body><main class=\"login\"><h1>llmgw</h1><p id=\"msg\">%s</p>\n"
    "<form method=\"post\" action=\"/ui/login\"><label>admin key <input type=\"password\" name=\"key\" autocomplete=\"current-password\" autofocus></label> <button>log in</button></form></main></body></html>\n";
/* GET /ui/app.css */
static const char lg_dash_css[] =
    "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#f6f6f4}\n"
    "header{display:flex;gap:1em;align-items:center;padding:.5em 1em;background:#223;color:#eee}\n"
    "header form{margin-left:auto}\n"
    "main{padding:0 1em 2em}\n"
    "section{background:#fff;margin:1em 0;padding:.5em 1em;border-radius:6px}\n"
    "h2{font-size:15px;margin:.3em 0}\n"
    "table{border-collapse:collapse;width:100%}\n"
    "td,th{text-align:left;padding:2px 6px;border-bottom:1px solid #eee;white-space:nowrap}\n"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}\n"
    "tr.sel{background:#ffd}\n"
    "tbody tr{cursor:default}\n"
    "#reqs tbody tr{cursor:pointer}\n"
    ".bar{display:flex;gap:.5em;margin:.3em 0}\n"
    ".prog{display:inline-block;width:120px;height:10px;background:#ddd;border-radius:5px;overflow:hidden}\n"
    ".prog i{display:block;height:100%;background:#48a}\n"
    ".prog i.hot{background:#c44}\n"
    "svg{width:100%;height:220px;background:#fcfcfc}\n"
    "svg text{font-size:10px;fill:#555}\n"
    "pre{background:#f4f4f4;padding:.5em;overflow:auto;max-height:300px}\n"
    ".login{max-width:420px;margin:4em auto;background:#fff;padding:1em 2em;border-radius:6px}\n"
    ".bad{color:#b00}\n";
/* GET /ui/app.js */
static const char lg_dash_js[] =
    "'use strict';\n"
    "// The llmgw dashboard: reads /admin/* (same origin, the login cookie) and writes every value\n"
    "// with textContent, never as HTML.\n"
    "const $ = (id) => document.getElementById(id);\n"
    "const COLORS = ['#48a', '#c63', '#4a6', '#a4a', '#aa4', '#4aa', '#a44', '#666'];\n"
    "let lastSeq = 0, rows = [], selected = '';\n"
    "async function get(path) {\n"
    "  const r = await fetch(path, {credentials: 'same-origin', cache: 'no-store'});\n"
    "  if (r.status === 401) { location.href = '/ui'; throw new Error('logged out'); }\n"
    "  if (!r.ok) throw new Error(path + ': ' + r.status);\n"
    "  return r.json();\n"
    "}\n"
    "function td(tr, v, num) {\n"
    "  const c = document.createElement('td');\n"
    "  c.textContent = v === null || v === undefined ? '' : String(v);\n"
    "  if (num) c.className = 'n';\n"
    "  tr.appendChild(c);\n"
    "  return c;\n"
    "}\n"
    "function usd(v) { return (v || 0).toFixed(6); }\n"
    "function when(ms) { return ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) : ''; }\n"
    "function fill(id, list, fn) {\n"
    "  const tb = $(id).tBodies[0];\n"
    "  tb.replaceChildren();\n"
    "  for (const x of list) { const tr = document.createElement('tr'); fn(tr, x); tb.appendChild(tr); }\n"
    "}\n"
    "function svg(tag, attrs, text) {\n"
    "  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);\n"
    "  for (const k in attrs) e.setAttribute(k, attrs[k]);\n"
    "  if (text !== undefined) e.textContent = text;\n"
    "  return e;\n"
    "}\n"
    "async function facts() {\n"
    "  const o = await get('/admin/overview');\n"
    "  let t = 'v' + o.version + ' · up ' + o.uptime_s + ' s · ' + o.config + ' · ' + o.requests_served + ' requests · ' +\n"
    "    o.in_flight + ' in flight';\n"
    "  if (o.reload.count) t += ' · last reload ' + (o.reload.ok ? 'ok' : 'FAILED: ' + o.reload.error);\n"
    "  if (o.memory.rss_bytes) t += ' · ' + (o.memory.rss_bytes / 1048576).toFixed(1) + ' MB';\n"
    "  $('facts').textContent = t;\n"
    "}\n"
    "async function chart() {\n"
    "  const by = $('by').value, range = $('range').value, metric = $('metric').value;\n"
    "  const s = await get('/admin/series?by=' + by + '&range=' + range);\n"
    "  const c = $('chart');\n"
    "  c.replaceChildren();\n"
    "  const W = 800, H = 200, L = 60, n = s.buckets, top = s.series.slice(0, COLORS.length);\n"
    "  let max = 0;\n"
    "  for (const x of top) for (const v of x[metric]) max = Math.max(max, v);\n"
    "  if (!max) max = 1;\n"
    "  c.appendChild(svg('line', {x1: L, y1: H, x2: W, y2: H, stroke: '#999'}));\n"
    "  c.appendChild(svg('text', {x: 2, y: 12, id: 'chart-max'}, metric === 'usd' ? usd(max) : String(max)));\n"
    "  c.appendChild(svg('text', {x: 2, y: H}, '0'));\n"
    "  c.appendChild(svg('text', {x: L, y: H + 14}, when(s.start_ms)));\n"
    "  c.appendChild(svg('text', {x: W - 110, y: H + 14}, 'now'));\n"
    "  top.forEach((x, i) => {\n"
    "    const pts = x[metric].map((v, k) => (L + (W - L) * k / Math.max(1, n - 1)).toFixed(1) + ',' +\n"
    "      (H - (H - 10) * v / max).toFixed(1)).join(' ');\n"
    "    const p = svg('polyline', {points: pts, fill: 'none', stroke: COLORS[i], 'stroke-width': 2});\n"
    "    p.dataset.name = x.name;\n"
    "    p.dataset.total = metric === 'usd' ? usd(x.usd_total) : String(x[metric + '_total']);\n"
    "    p.appendChild(svg('title', {}, x.name));\n"
    "    c.appendChild(p);\n"
    "    c.appendChild(svg('text', {x: L + 120 + 150 * i, y: 12, fill: COLORS[i]}, x.name || 'all'));\n"
    "  });\n"
    "  fill('top', s.series, (tr, x) => {\n"
    "    td(tr, x.name || 'all'); td(tr, usd(x.usd_total), 1); td(tr, x.tokens_total, 1);\n"
    "    td(tr, x.requests_total, 1); td(tr, x.errors_total, 1);\n"
    "  });\n"
    "}\n"
    "async function keys() {\n"
    "  const k = await get('/admin/keys');\n"
    "  fill('keys', k.keys, (tr, x) => {\n"
    "    const b = x.budget;\n"
    "    td(tr, x.name);\n"
    "    td(tr, b.period === 'none' ? 'none' : usd(b.limit) + ' / ' + b.period, 1);\n"
    "    td(tr, usd(b.spend), 1);\n"
    "    const c = td(tr, '');\n"
    "    if (b.period !== 'none' && b.limit > 0) {\n"
    "      const p = document.createElement('span'), i = document.createElement('i'), f = Math.min(1, b.spend / b.limit);\n"
    "      p.className = 'prog'; i.style.width = (100 * f).toFixed(1) + '%';\n"
    "      if (f > 0.9) i.className = 'hot';\n"
    "      p.title = (100 * f).toFixed(1) + '%'; p.appendChild(i); c.appendChild(p);\n"
    "    }\n"
    "    td(tr, b.reset_ms ? when(b.reset_ms) : '');\n"
    "    td(tr, x.rpm.limit ? x.rpm.remaining + ' / ' + x.rpm.limit : '', 1);\n"
    "    td(tr, x.tpm.limit ? x.tpm.remaining + ' / ' + x.tpm.limit : '', 1);\n"
    "    td(tr, x.concurrency.in_flight + (x.concurrency.limit ? ' / ' + x.concurrency.limit : ''), 1);\n"
    "  });\n"
    "}\n"
    "async function health() {\n"
    "  const h = await get('/admin/health');\n"
    "  fill('health', h.targets, (tr, x) => {\n"
    "    td(tr, x.id); td(tr, x.breaker); td(tr, (100 * x.error_rate).toFixed(1) + '%', 1); td(tr, x.ok, 1);\n"
    "    td(tr, x.errors, 1); td(tr, Math.round(x.ttft_ms), 1); td(tr, x.tokens_per_s.toFixed(1), 1); td(tr, x.in_flight, 1);\n"
    "  });\n"
    "}\n"
    "function filters() {\n"
    "  let q = '';\n"
    "  for (const f of ['key', 'model', 'provider', 'status', 'stream']) {\n"
    "    const v = $('f-' + f).value.trim();\n"
    "    if (v) q += '&' + f + '=' + encodeURIComponent(v);\n"
    "  }\n"
    "  return q;\n"
    "}\n"
    "function drawReqs() {\n"
    "  fill('reqs', rows, (tr, x) => {\n"
    "    td(tr, when(x.created_ms)); td(tr, x.id); td(tr, x.key); td(tr, x.model); td(tr, x.provider);\n"
    "    td(tr, x.status, 1); td(tr, x.stream ? 'yes' : 'no'); td(tr, x.latency_ms, 1);\n"
    "    td(tr, x.prompt_tokens + x.completion_tokens, 1); td(tr, usd(x.cost), 1);\n"
    "    if (x.id === selected) tr.className = 'sel';\n"
    "    tr.addEventListener('click', () => detail(x.id));\n"
    "  });\n"
    "}\n"
    "async function reqs(reset) {\n"
    "  // only what is newer than the newest row shown: the log is never fetched whole again\n"
    "  if (reset) { rows = []; lastSeq = 0; }\n"
    "  const r = await get('/admin/requests?limit=100&after=' + lastSeq + filters());\n"
    "  if (r.requests.length) {\n"
    "    rows = r.requests.concat(rows).slice(0, 200);\n"
    "    lastSeq = rows[0].seq;\n"
    "  }\n"
    "  drawReqs();\n"
    "}\n"
    "async function detail(id) {\n"
    "  selected = id;\n"
    "  const g = await get('/admin/generation?id=' + encodeURIComponent(id));\n"
    "  $('detail').textContent = JSON.stringify(g.data, null, 2);\n"
    "  drawReqs();\n"
    "}\n"
    "async function tick() {\n"
    "  try { await Promise.all([facts(), chart(), keys(), health(), reqs(false)]); document.body.dataset.ready = '1'; }\n"
    "  catch (e) { $('facts').textContent = String(e); }\n"
    "}\n"
    "for (const id of ['by', 'range', 'metric']) $(id).addEventListener('change', () => chart());\n"
    "for (const f of ['key', 'model', 'provider', 'status', 'stream'])\n"
    "  $('f-' + f).addEventListener('change', () => reqs(true));\n"
    "tick();\n"
    "setInterval(tick, 3000);\n";

/* --- gzip: deflate with the fixed Huffman codes and LZ77 over a 32 KB window --------------- */

struct lg_dash_bits {
	struct lg_buf *o;
	uint32_t acc;
	int n;
};

static void lg_dash_put(struct lg_dash_bits *w, uint32_t v, int bits) /* LSB first */
{
	w->acc |= v << w->n;
	w->n += bits;
	while (w->n >= 8) {
		unsigned char c = (unsigned char)(w->acc & 255);
		lg_buf_add(w->o, &c, 1);
		w->acc >>= 8;
		w->n -= 8;
	}
}

static void lg_dash_huff(struct lg_dash_bits *w, uint32_t code, int bits) /* a Huffman code: MSB first */
{
	uint32_t r = 0;
	int i;
	for (i = 0; i < bits; i++) r |= ((code >> i) & 1u) << (bits - 1 - i);
	lg_dash_put(w, r, bits);
}

static void lg_dash_lit(struct lg_dash_bits *w, int v)
{
	if (v < 144) lg_dash_huff(w, 0x30u + (uint32_t)v, 8);
	else if (v < 256) lg_dash_huff(w, 0x190u + (uint32_t)(v - 144), 9);
	else if (v < 280) lg_dash_huff(w, (uint32_t)(v - 256), 7);
	else lg_dash_huff(w, 0xC0u + (uint32_t)(v - 280), 8);
}

/* data as a gzip member into o (RFC 1951 fixed-code blocks, RFC 1952 framing). */
static int lg_dash_gzip(const char *data, size_t n, struct lg_buf *o)
{
	static const unsigned short lbase[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
	                                         31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
	static const unsigned char lext[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
	static const unsigned short dbase[30] = {1,   2,   3,   4,   5,   7,    9,    13,   17,   25,   33,   49,   65,    97,    129,
	                                         193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
	static const unsigned char dext[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
	static const unsigned char head[10] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3};
	struct lg_dash_bits w;
	int *hh = (int *)malloc(4096 * sizeof(int));
	size_t i = 0;
	uint32_t crc = lg_crc32(0, data, n);
	unsigned char tail[8];
	int k;
	if (!hh) return -1;
	for (k = 0; k < 4096; k++) hh[k] = -1;
	w.o = o, w.acc = 0, w.n = 0;
	lg_buf_add(o, head, sizeof head);
	lg_dash_put(&w, 1, 1); /* BFINAL: one block */
	lg_dash_put(&w, 1, 2); /* BTYPE 01: fixed codes */
	while (i < n) {
		size_t best = 0, dist = 0;
		if (i + 3 <= n) {
			unsigned hsh = ((unsigned char)data[i] * 2654435761u ^ (unsigned char)data[i + 1] * 40503u ^
			                (unsigned char)data[i + 2]) & 4095u;
			int c = hh[hsh];
			if (c >= 0 && i - (size_t)c <= 32768) {
				size_t m = 0;
				while (m < 258 && i + m < n && data[c + (long)m] == data[i + m]) m++;
				if (m >= 3) best = m, dist = i - (size_t)c;
			}
			hh[hsh] = (int)i;
		}
		if (best) {
			int lc = 28, dc = 29;
			while (lbase[lc] > best) lc--;
			while (dbase[dc] > dist) dc--;
			lg_dash_lit(&w, 257 + lc);
			lg_dash_put(&w, (uint32_t)(best - lbase[lc]), lext[lc]);
			lg_dash_huff(&w, (uint32_t)dc, 5);
			lg_dash_put(&w, (uint32_t)(dist - dbase[dc]), dext[dc]);
			i += best;
		} else
			lg_dash_lit(&w, (unsigned char)data[i++]);
	}
	lg_dash_lit(&w, 256);
	if (w.n) lg_dash_put(&w, 0, 8 - w.n);
	for (k = 0; k < 4; k++) tail[k] = (unsigned char)(crc >> (8 * k)), tail[4 + k] = (unsigned char)((uint32_t)n >> (8 * k));
	lg_buf_add(o, tail, 8);
	free(hh);
	return o->err ? -1 : 0;
}

/* A static asset, gzipped when the client takes it. */
static void lg_dash_asset(struct lg_req *r, const char *ctype, const char *body)
{
	struct lg_buf z;
	size_t n = strlen(body);
	lg_buf_init(&z, 0);
	if (r->gzip_ok && lg_dash_gzip(body, n, &z) == 0 && z.len < n)
		lg_dash_send(r, 200, ctype, z.p, z.len, "Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n");
	else
		lg_dash_send(r, 200, ctype, body, n, "Vary: Accept-Encoding\r\n");
	lg_buf_free(&z);
}

/* The login form, status 401 (no key, or a wrong one) or 200. */
static void lg_dash_login(struct lg_req *r, int status, const char *msg)
{
	struct lg_buf b, e;
	const char *m = msg, *pct = strstr(lg_dash_login_html, "%s");
	lg_buf_init(&b, 0);
	lg_buf_init(&e, 0);
	for (; *m; m++) { /* HTML-escaped, though only llmgw's own words come here */
		if (*m == '<') lg_buf_addz(&e, "&lt;");
		else if (*m == '>') lg_buf_addz(&e, "&gt;");
		else if (*m == '&') lg_buf_addz(&e, "&amp;");
		else if (*m == '"') lg_buf_addz(&e, "&quot;");
		else lg_buf_add(&e, m, 1);
	}
	lg_buf_add(&b, lg_dash_login_html, (size_t)(pct - lg_dash_login_html));
	lg_buf_add(&b, e.p ? e.p : "", e.len);
	lg_buf_addz(&b, pct + 2);
	lg_dash_send(r, status, "text/html; charset=utf-8", b.p, b.len, NULL);
	lg_buf_free(&b);
	lg_buf_free(&e);
}

/* POST /ui/login (key=... in a form body): the cookie, or the form again. The key is only
 * read from the body, never from the URL. */
static void lg_dash_do_login(struct lg_req *r)
{
	const char *ak = r->cfg->admin_key;
	char key[512], tok[128], hdr[400];
	size_t i, o = 0, n = r->chunked ? r->body_len : (size_t)(r->clen > 0 ? r->clen : 0);
	const char *p = r->body;
	unsigned char h1[32], h2[32];
	key[0] = 0;
	for (i = 0; i + 4 <= n; i++) /* the key= field of the form */
		if ((i == 0 || p[i - 1] == '&') && memcmp(p + i, "key=", 4) == 0) {
			for (i += 4; i < n && p[i] != '&' && o + 1 < sizeof key; i++) {
				if (p[i] == '%' && i + 2 < n && lg_hexval(p[i + 1]) >= 0 && lg_hexval(p[i + 2]) >= 0) {
					key[o++] = (char)(lg_hexval(p[i + 1]) << 4 | lg_hexval(p[i + 2]));
					i += 2;
				} else
					key[o++] = p[i] == '+' ? ' ' : p[i];
			}
			break;
		}
	key[o] = 0;
	lg_sha256(key, o, h1);
	lg_sha256(ak ? ak : "", ak ? strlen(ak) : 0, h2);
	if (!ak || !*ak) {
		lg_dash_login(r, 403, "The dashboard needs admin_key in [gateway].");
		return;
	}
	if (!o || !lg_ct_eq(h1, h2, 32)) {
		lg_dash_login(r, 401, "Wrong admin key.");
		return;
	}
	lg_dash_token(ak, (long long)((lg_wall_ms() + LG_DASH_SESSION_MS) / 1000), tok, sizeof tok);
	snprintf(hdr, sizeof hdr, "Location: /ui\r\nSet-Cookie: llmgw_ui=%s; Path=/; Max-Age=%d; HttpOnly; "
	                          "SameSite=Strict%s\r\n", tok, LG_DASH_SESSION_MS / 1000, r->cc && r->cc->tls ? "; Secure" : "");
	lg_dash_send(r, 303, "text/plain", "", 0, hdr);
}

/* Every dashboard endpoint, authenticated already (lg_srv_head), read inside the store's view. */
static void lg_dash_serve(struct lg_req *r)
{
	struct lg_buf b;
	lg_buf_init(&b, 0);
	switch (r->ep) {
	case LG_EP_UI: lg_dash_asset(r, "text/html; charset=utf-8", lg_dash_page); break;
	case LG_EP_UI_JS: lg_dash_asset(r, "text/javascript; charset=utf-8", lg_dash_js); break;
	case LG_EP_UI_CSS: lg_dash_asset(r, "text/css; charset=utf-8", lg_dash_css); break;
	case LG_EP_UI_LOGIN: lg_dash_do_login(r); break;
	case LG_EP_UI_LOGOUT:
		lg_dash_send(r, 303, "text/plain", "", 0,
		             "Location: /ui\r\nSet-Cookie: llmgw_ui=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict\r\n");
		break;
	default:
		if (r->ep == LG_EP_A_OVERVIEW) lg_dash_overview(r, &b);
		else if (r->ep == LG_EP_A_SERIES) lg_dash_series(r, &b);
		else if (r->ep == LG_EP_A_KEYS) lg_dash_keys(r, &b);
		else if (r->ep == LG_EP_A_REQUESTS) lg_dash_requests(r, &b);
		else if (r->ep == LG_EP_A_GEN) lg_dash_generation(r, &b);
		else lg_dash_health(r, &b);
		if (r->status) break; /* answered with an error */
		if (b.err) lg_dash_json_err(r, 500, "out of memory");
		else lg_dash_send(r, 200, "application/json", b.p, b.len, NULL);
	}
	lg_buf_free(&b);
}

/* ===== 15. Server handlers ============================================= */

enum { LG_CS_HEAD, LG_CS_BODY, LG_CS_BUSY };

static void lg_srv_advance(struct lg_conn *c);
static void lg_srv_timeout(struct llmgw *gw, struct lg_timer *t);


/* Ends a request: the upstream connection goes back to the pool or is
 * closed, the access log gets its line, and the client connection moves
 * on to its next (possibly pipelined) request. */
static void lg_srv_finish(struct lg_req *r)
{
	struct llmgw *gw = r->gw;
	struct lg_conn *c = r->cc;
	int gone;
	if (r->finished) return;
	r->finished = 1;
	lg_st_cancel(r);
	lg_up_release(&r->up);
	lg_timer_clear(gw, &r->rtm);
	lg_route_done(r, -1); /* an attempt still open: the client went away */
	lg_acct_counted(r);
	/* the charge is in the ledger before the answer's last bytes leave; the
	 * rest of the books after them: their cost is not the client's wait */
	lg_st_charge(r);
	gone = c && lg_buf_used(&c->out) && lg_conn_flush(c) < 0;
	if (!r->status) r->status = c ? 500 : 499;
	if (LG_EP_ASKS_MODEL(r->ep) || r->status >= 400) lg_acct_log(r);
	lg_st_settle(r);
	lg_dash_record(r); /* section 14 */
	gw->served++;
	/* out of the in-flight list, onto the list freed after this iteration */
	if (r->prev)
		r->prev->next = r->next;
	else
		gw->reqs = r->next;
	if (r->next) r->next->prev = r->prev;
	lg_gauge_add(&gw->nreqs, -1);
	r->prev = NULL;
	r->next = gw->dead;
	gw->dead = r;
	lg_cfg_unref(r->cfg);
	r->cfg = NULL;
	if (!c) return;
	c->req = NULL;
	/* head and body leave the input buffer; for a chunked body the decoder
	 * already moved what followed right after the decoded body */
	lg_buf_consume(&c->in, LG_MIN(r->head_len + r->body_len, lg_buf_used(&c->in)));
	c->cstate = LG_CS_HEAD;
	c->scan = 0;
	c->head_start = gw->now;
	if (r->close) c->flags |= LG_F_CLOSE_AFTER;
	c->flags &= ~(unsigned)LG_F_NOREAD;
	if (gone || lg_conn_flush(c) < 0 || ((c->flags & LG_F_CLOSE_AFTER) && !lg_buf_used(&c->out))) {
		lg_conn_close(c);
		return;
	}
	c->tm.fn = lg_srv_timeout;
	lg_timer_set(gw, &c->tm, lg_buf_used(&c->in) ? gw->cfg->header_timeout : gw->cfg->idle_timeout);
	if (!lg_buf_used(&c->in) && !c->advancing) lg_blk_give(gw, &c->in); /* idle: give the memory back */
	lg_blk_give(gw, &c->out);
	if (!c->advancing && lg_buf_used(&c->in) && !(c->flags & LG_F_CLOSE_AFTER)) lg_srv_advance(c);
}

/* Opens the access log named by the config ("-" = stderr, "" = off). */
static LG_COLD int lg_srv_open_log(struct llmgw *gw, const struct lg_cfg *c, char *err, size_t errlen)
{
	int fd = -1;
	if (c->access_log && strcmp(c->access_log, "-") == 0) {
		fd = dup(2);
	} else if (c->access_log && *c->access_log) {
		fd = open(c->access_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
		if (fd < 0) {
			snprintf(err, errlen, "%s: cannot open access_log %s: %s", c->path, c->access_log,
			         strerror(errno));
			return -1;
		}
	}
	lg_acct_flush(gw);
	if (gw->logfd >= 0) close(gw->logfd);
	gw->logfd = fd;
	return 0;
}

/* Installs a new snapshot; requests in flight keep the one they hold. */
static LG_COLD int lg_srv_install(struct llmgw *gw, struct lg_cfg *c, char *err, size_t errlen)
{
	if (gw->started && lg_srv_open_log(gw, c, err, errlen)) {
		lg_cfg_free(c);
		return -1;
	}
	if (gw->cfg) {
		int i, same = gw->cfg->nlisten == c->nlisten;
		for (i = 0; same && i < c->nlisten; i++) same = strcmp(gw->cfg->listen[i], c->listen[i]) == 0;
		if (!same && gw->started)
			LG_LOG(gw, LG_LOG_WARN, "listen addresses changed: they take effect on restart");
	}
	lg_cfg_unref(gw->cfg);
	gw->cfg = c;
	gw->log_level = c->log_level;
	lg_st_install(gw, c);
	if (gw->sh) { /* publish it: every other loop adopts it at its next iteration */
		struct lg_cfg *old;
		int k;
		lg_lock(gw);
		c->gen = (unsigned long)lg_atomic_add(&gw->sh->cfg_gen, 1);
		old = gw->sh->cfg;
		lg_cfg_ref(c);
		gw->sh->cfg = c;
		for (k = 0; k < gw->sh->nw; k++)
			if (gw->sh->w[k] != gw) lg_loop_wake(gw->sh->w[k]);
		lg_unlock(gw);
		lg_cfg_unref(old);
	} else {
		c->gen = ++gw->cfg_gen;
	}
	if (!c->auth_none && c->nkeys == 0)
		LG_LOG(gw, LG_LOG_WARN, "auth = keys and no [key.*] section: every request will get 401 "
		                        "(add a [key.NAME] section, or auth = none on loopback)");
	if (gw->started && c->workers != gw->cfg_workers)
		LG_LOG(gw, LG_LOG_WARN, "workers changed: it takes effect on restart");
	return 0;
}

/* A loop of workers = N takes up the configuration another loop
 * published (a reload, or POST /admin/reload served by any loop). */
static void lg_srv_adopt(struct llmgw *gw)
{
	struct lg_cfg *c;
	char err[512];
	lg_lock(gw);
	c = gw->sh->cfg;
	if (c == gw->cfg) {
		lg_unlock(gw);
		return;
	}
	lg_cfg_ref(c);
	lg_unlock(gw);
	if (lg_srv_open_log(gw, c, err, sizeof err)) LG_LOG(gw, LG_LOG_ERROR, "%s (the access log stays as it was)", err);
	lg_cfg_unref(gw->cfg);
	gw->cfg = c;
	gw->log_level = c->log_level;
	lg_st_install(gw, c);
}

static LG_COLD int lg_srv_reload(struct llmgw *gw, char *err, size_t errlen)
{
	struct lg_cfg *c;
	if (!gw->cfg_path) {
		snprintf(err, errlen, "the configuration was not loaded from a file");
		return -1;
	}
	c = lg_cfg_load(gw->cfg_path, err, errlen);
	if (!c || lg_srv_install(gw, c, err, errlen)) {
		LG_LOG(gw, LG_LOG_ERROR, "reload failed, keeping the running configuration: %s", err);
		lg_dash_reloaded(gw, 0, err); /* section 14 */
		return -1;
	}
	lg_dash_reloaded(gw, 1, NULL);
	LG_LOG(gw, LG_LOG_INFO, "configuration reloaded from %s: %d providers, %d models, %d keys",
	       gw->cfg_path, c->nprov, c->nmodels, c->nkeys);
	return 0;
}

static struct lg_req *lg_srv_new_req(struct lg_conn *c, int minor)
{
	struct llmgw *gw = c->gw;
	struct lg_req *r = gw->rfree;
	struct lg_buf ureq, ubody;
	struct lg_jtok *rtok = NULL;
	uint32_t rcap = 0;
	struct lg_arena a;
	struct lg_att_log *att = NULL;
	uint64_t x;
	lg_buf_init(&ureq, 0);
	lg_buf_init(&ubody, 0);
	a.head = NULL;
	if (r) { /* a finished one, with what it kept */
		gw->rfree = r->next;
		gw->nrfree--;
		ureq = r->up.req, ubody = r->ubody, rtok = r->rtok, rcap = r->rcap, a = r->a, att = r->att;
	} else {
		if (!(r = (struct lg_req *)malloc(sizeof *r))) return NULL;
		r->keep_jt = NULL;
		r->keep_jcap = 0;
		r->att_cap = 0;
	}
	if (r->att_cap < gw->cfg->max_attempts) {
		struct lg_att_log *na = (struct lg_att_log *)realloc(att, (size_t)gw->cfg->max_attempts * sizeof *na);
		if (!na) {
			r->att = att, r->up.req = ureq, r->ubody = ubody, r->rtok = rtok, r->rcap = rcap, r->a = a;
			r->j.t = NULL, r->w = NULL;
			lg_buf_init(&r->scratch, 0);
			lg_req_destroy(r);
			return NULL;
		}
		att = na;
		r->att_cap = gw->cfg->max_attempts;
	}
	memset(r, 0, offsetof(struct lg_req, errmsg)); /* the plan and messages need no zeroing */
	r->errmsg[0] = r->canon_err[0] = 0;
	r->d = LG_DIALECT_OPENAI;
	r->att = att;
	r->rtok = rtok;
	r->rcap = rcap;
	r->a = a;
	r->gw = gw;
	r->cc = c;
	r->cfg = gw->cfg;
	lg_cfg_ref(r->cfg);
	r->a.chunk = 1024; /* model names and the like: small */
	r->minor = minor;
	r->t0 = gw->now;
	r->wall0 = lg_wall_ms();
	r->up.gw = gw;
	r->up.owner = r;
	r->up.tm.hidx = -1;
	r->rtm.hidx = -1;
	r->up.on_head = lg_att_head;
	r->up.on_data = lg_att_data;
	r->up.on_end = lg_att_end;
	r->up.on_fail = lg_att_fail;
	r->up.req = ureq;
	r->ubody = ubody;
	lg_buf_init(&r->scratch, LLMGW_MAX_EVENT + 16);
	lg_blk_take(gw, &c->out);
	x = lg_rand(&gw->rng);
	lg_lock(gw);
	r->seq = gw->sh ? ++gw->sh->seq : ++gw->seq; /* ids and the ring are across loops */
	lg_unlock(gw);
	{ /* "gen-<seq hex>-<8 random hex>" without printf */
		static const char hx[] = "0123456789abcdef";
		char tmp[20];
		int k = 0, at = 4, b;
		uint64_t q = r->seq;
		memcpy(r->id, "gen-", 4);
		do
			tmp[k++] = hx[q & 15];
		while ((q >>= 4) && k < 16);
		while (k) r->id[at++] = tmp[--k];
		r->id[at++] = '-';
		for (b = 28; b >= 0; b -= 4) r->id[at++] = hx[(x >> b) & 15];
		r->id[at] = 0;
	}
	r->next = gw->reqs;
	if (gw->reqs) gw->reqs->prev = r;
	gw->reqs = r;
	lg_gauge_add(&gw->nreqs, 1);
	c->req = r;
	return r;
}

/* Authenticates the request: Bearer or x-api-key against every key, in
 * constant time (all keys are compared, hashes of equal length). */
static int lg_srv_auth(struct lg_req *r, const struct lg_http *h, char *msg, size_t mlen)
{
	const struct lg_cfg *c = r->cfg;
	lg_str a = lg_http_get(h, "authorization"), x = lg_http_get(h, r->d->key_header), sec;
	unsigned char hash[32];
	int i;
	if (c->auth_none) return 0;
	if (a.n > 7 && lg_str_ieq(lg_str_of(a.p, 7), "bearer "))
		sec = lg_str_trim(lg_str_of(a.p + 7, a.n - 7));
	else if (x.n)
		sec = x;
	else {
		snprintf(msg, mlen, "missing API key: send Authorization: Bearer <key> or %s: <key>", r->d->key_header);
		return 401;
	}
	if (c->nkeys == 0) {
		snprintf(msg, mlen, "no API keys are configured on this gateway ([key.*] sections)");
		return 401;
	}
	if (r->cc && r->cc->auth_gen == c->gen && r->cc->auth_len == sec.n &&
	    memcmp(r->cc->auth_sec, sec.p, sec.n) == 0 && r->cc->auth_idx < c->nkeys) {
		/* the same secret this connection sent before (only its own, so nothing leaks): no hashing */
		r->key = c->keys[r->cc->auth_idx];
		return 0;
	}
	lg_sha256(sec.p, sec.n, hash);
	for (i = 0; i < c->nkeys; i++)
		if (lg_ct_eq(hash, c->keys[i]->hash, 32) && !r->key) {
			r->key = c->keys[i];
			if (r->cc && sec.n <= sizeof r->cc->auth_sec) {
				r->cc->auth_gen = c->gen;
				r->cc->auth_idx = i;
				r->cc->auth_len = (unsigned char)sec.n;
				memcpy(r->cc->auth_sec, sec.p, sec.n);
			}
		}
	if (!r->key) { /* "invalid x-api-key", as Anthropic says it: Claude Code then names the fix */
		snprintf(msg, mlen, "invalid %s", x.n && !(a.n > 7) ? r->d->key_header : "API key");
		return 401;
	}
	return 0;
}

/* --- endpoints --------------------------------------------------------- */

static void lg_srv_health(struct lg_req *r)
{
	if (r->gw->stopping)
		lg_resp_send(r, 503, "application/json", "{\"status\":\"draining\"}\n", 22, NULL);
	else
		lg_resp_send(r, 200, "application/json", "{\"status\":\"ok\"}\n", 16, NULL);
}

/* GET /v1/models, in the client's dialect (its row's models). */
static LG_COLD void lg_srv_models(struct lg_req *r)
{
	struct lg_buf b;
	const struct lg_model *m = NULL;
	if (r->ep == LG_EP_MODEL) { /* GET /v1/models/{id}: a public name or alias, percent-decoded */
		char id[300];
		size_t i, o = 0;
		const char *z = r->model_req ? r->model_req : "";
		for (i = 0; z[i] && o + 1 < sizeof id; i++)
			if (z[i] == '%' && lg_hexval(z[i + 1]) >= 0 && lg_hexval(z[i + 2]) >= 0) {
				id[o++] = (char)(lg_hexval(z[i + 1]) << 4 | lg_hexval(z[i + 2]));
				i += 2;
			} else {
				id[o++] = z[i];
			}
		id[o] = 0;
		m = lg_cfg_find_model(r->cfg, lg_strz(id));
		if (!m || !lg_route_key_allows(r->key, m->name)) {
			lg_resp_error(r, 404, NULL, "no such model: '%.200s'", id);
			return;
		}
	}
	lg_buf_init(&b, 0);
	r->d->models(r, &b, m);
	lg_resp_send(r, 200, "application/json", b.p, b.len, NULL);
	lg_buf_free(&b);
}

static LG_COLD void lg_srv_admin_reload(struct lg_req *r)
{
	char err[1024];
	if (lg_srv_reload(r->gw, err, sizeof err) == 0)
		lg_resp_send(r, 200, "application/json", "{\"status\":\"reloaded\"}\n", 22, NULL);
	else
		lg_resp_error(r, 500, NULL, "reload failed, the running configuration stays: %s", err);
}

static void lg_srv_usd(struct lg_buf *b, const char *name, double v)
{
	lg_buf_printf(b, ",\"%s\":", name);
	lg_json_wnum(b, v);
}

/* GET /v1/key: the calling key's budget, spend, limits and what remains. */
static LG_COLD void lg_srv_key(struct lg_req *r)
{
	const struct lg_key *k = r->key;
	const struct lg_stview *sv = r->st_view;
	double spend, reserved;
	struct lg_kstate *ks;
	struct lg_buf b;
	int64_t reset = 0;
	if (!k) {
		lg_resp_error(r, 400, NULL, "auth = none: requests carry no key, so there is nothing to report");
		return;
	}
	ks = lg_acct_kstate(r->gw, k->name);
	if (!ks) {
		lg_resp_error(r, 500, NULL, "out of memory");
		return;
	}
	lg_acct_roll(ks, k, r->wall0);
	lg_acct_refill(ks, k, r->gw->now);
	spend = ks->spend, reserved = ks->reserved;
	if (k->budget > 0) lg_acct_period(k->period, r->wall0, &reset);
	if (sv && sv->fleet) { /* the store's figures: every instance's */
		spend = sv->spend;
		reserved = sv->held;
	}
	lg_buf_init(&b, 0);
	lg_buf_addz(&b, "{\"data\":{\"label\":");
	lg_json_wz(&b, k->name);
	lg_buf_addz(&b, ",\"name\":");
	lg_json_wz(&b, k->name);
	lg_srv_usd(&b, "usage", spend);
	if (k->budget > 0) {
		lg_srv_usd(&b, "limit", k->budget);
		lg_srv_usd(&b, "limit_remaining", LG_MAX(0.0, k->budget - spend - reserved));
	} else {
		lg_buf_addz(&b, ",\"limit\":null,\"limit_remaining\":null");
	}
	lg_buf_printf(&b, ",\"budget\":{\"period\":\"%s\"", k->budget > 0 ? lg_period_names[k->period] : "none");
	lg_srv_usd(&b, "spend", spend);
	lg_srv_usd(&b, "reserved", reserved);
	if (reset) {
		time_t t = (time_t)(reset / 1000);
		struct tm tm;
		char when[40];
		gmtime_r(&t, &tm);
		strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
		lg_buf_printf(&b, ",\"resets_at\":\"%s\"}", when);
	} else {
		lg_buf_addz(&b, ",\"resets_at\":null}");
	}
	lg_srv_usd(&b, "total_spend", ks->total);
	lg_buf_printf(&b, ",\"limits\":{\"rpm\":%ld,\"tpm\":%ld,\"max_concurrency\":%d},\"remaining\":{", k->rpm,
	              k->tpm, k->max_concurrency);
	if (sv && sv->fleet) { /* sliding windows across the fleet */
		if (k->rpm) lg_buf_printf(&b, "\"requests\":%lld,", (long long)LG_MAX((int64_t)0, k->rpm - sv->rpm_used));
		if (k->tpm) lg_buf_printf(&b, "\"tokens\":%lld,", (long long)LG_MAX((int64_t)0, k->tpm - sv->tpm_used));
		/* (requests hold leases in the store only under a max_concurrency) */
		lg_buf_printf(&b, "\"in_flight\":%lld},\"fleet\":{\"instances\":%lld,\"requests_last_minute\":%lld,"
		              "\"tokens_last_minute\":%lld,\"this_instance_usage\":",
		              k->max_concurrency ? (long long)sv->leases : (long long)ks->inflight, (long long)sv->insts,
		              (long long)sv->rpm_used, (long long)sv->tpm_used);
		lg_json_wnum(&b, ks->spend);
		lg_buf_addz(&b, "}}}\n");
	} else {
		if (k->rpm) lg_buf_printf(&b, "\"requests\":%ld,", (long)ks->rpm_tok);
		if (k->tpm) lg_buf_printf(&b, "\"tokens\":%ld,", (long)LG_MAX(0.0, ks->tpm_tok));
		lg_buf_printf(&b, "\"in_flight\":%d}}}\n", ks->inflight);
	}
	lg_resp_send(r, 200, "application/json", b.p, b.len, NULL);
	lg_buf_free(&b);
}

/* GET /v1/generation?id=ID: one of the recent requests of the same key. */
static LG_COLD void lg_srv_generation(struct lg_req *r)
{
	const char *q = r->query ? strstr(r->query, "id=") : NULL;
	struct lg_acct *a = lg_acct_of(r->gw);
	char id[48];
	size_t n = 0;
	unsigned long long seq = 0;
	const struct lg_gen *g;
	const struct lg_stview *sv = r->st_view;
	struct lg_buf b;
	if (q) {
		q += 3;
		while (q[n] && q[n] != '&' && n + 1 < sizeof id) id[n] = q[n], n++;
	}
	id[n] = 0;
	if (!n || sscanf(id, "gen-%llx-", &seq) != 1 || !a) {
		lg_resp_error(r, 400, NULL, "GET /v1/generation needs ?id=<the x-request-id of a request>");
		return;
	}
	g = &a->ring[seq % LG_RING];
	if (g->seq != seq || strcmp(g->id, id) != 0 || (r->key && strcmp(g->key, r->key->name) != 0)) {
		const char *nl = sv && sv->rec ? (const char *)memchr(sv->rec, '\n', sv->reclen) : NULL;
		if (nl && (!r->key || lg_str_eq(lg_str_of(sv->rec, (size_t)(nl - sv->rec)), r->key->name))) {
			/* another instance's request, from the store ("<key>\n<answer>") */
			lg_resp_send(r, 200, "application/json", nl + 1, sv->reclen - (size_t)(nl + 1 - sv->rec), NULL);
			return;
		}
		lg_resp_error(r, 404, NULL, "generation %s is unknown (only the last %d requests of your key are kept)", id,
		              LG_RING);
		return;
	}
	lg_buf_init(&b, 0);
	lg_acct_gen_json(&b, g);
	lg_resp_send(r, 200, "application/json", b.p, b.len, NULL);
	lg_buf_free(&b);
}

/* GET /metrics: Prometheus text format 0.0.4. */
static LG_COLD void lg_srv_metrics(struct lg_req *r)
{
	struct llmgw *gw = r->gw;
	struct lg_acct *a = lg_acct_of(gw);
	struct lg_buf b;
	int m, i, nup = 0, ncl = 0, nreqs, npool;
	unsigned k;
	struct lg_kstate *ks;
	lg_buf_init(&b, 0);
	for (m = LG_M_REQUESTS; a && m <= LG_M_ATTEMPTS; m++) {
		int hist = m == LG_M_DURATION || m == LG_M_TTFT;
		lg_buf_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", lg_metric_names[m], lg_metric_help[m],
		              lg_metric_names[m], hist ? "histogram" : "counter");
		for (k = 0; k < a->capser; k++) {
			const struct lg_series *se = &a->ser[k];
			if (!se->used || se->metric != m) continue;
			if (!hist) {
				lg_buf_printf(&b, "%s{%s} %.10g\n", lg_metric_names[m], se->labels, se->v);
				continue;
			}
			for (i = 0; i < LG_HBUCKETS; i++)
				lg_buf_printf(&b, "%s_bucket{%s,le=\"%g\"} %llu\n", lg_metric_names[m], se->labels, lg_hist_le[i],
				              (unsigned long long)se->b[i]);
			lg_buf_printf(&b, "%s_bucket{%s,le=\"+Inf\"} %llu\n%s_sum{%s} %.6f\n%s_count{%s} %llu\n",
			              lg_metric_names[m], se->labels, (unsigned long long)se->count, lg_metric_names[m],
			              se->labels, se->sum, lg_metric_names[m], se->labels, (unsigned long long)se->count);
		}
	}
	{ /* every loop's own counts (read while they run: gauges) */
		int w, nw = gw->sh ? gw->sh->nw : 1, inflight = 0, idle = 0;
		for (w = 0; w < nw; w++) {
			const struct llmgw *g = gw->sh ? gw->sh->w[w] : gw;
			if (!g) continue;
			ncl += lg_gauge_get(&g->nclients);
			nup += lg_gauge_get(&g->nupstream);
			inflight += lg_gauge_get(&g->nreqs);
			idle += lg_gauge_get(&g->npool);
		}
		nreqs = inflight;
		npool = idle;
	}
	lg_buf_printf(&b, "# HELP llmgw_requests_in_flight Requests being answered.\n"
	                  "# TYPE llmgw_requests_in_flight gauge\nllmgw_requests_in_flight %d\n"
	                  "# HELP llmgw_connections Open connections by role.\n# TYPE llmgw_connections gauge\n"
	                  "llmgw_connections{role=\"client\"} %d\nllmgw_connections{role=\"upstream\"} %d\n"
	                  "# HELP llmgw_upstream_pool_idle Idle keep-alive upstream connections.\n"
	                  "# TYPE llmgw_upstream_pool_idle gauge\nllmgw_upstream_pool_idle %d\n",
	              nreqs - 1, ncl, nup, npool);
	lg_buf_addz(&b, "# HELP llmgw_key_spend_usd Spend of each key in its current budget period.\n"
	                "# TYPE llmgw_key_spend_usd gauge\n");
	for (ks = a ? a->keys : NULL; ks; ks = ks->next) {
		char kl[96];
		lg_acct_label(kl, sizeof kl, ks->name);
		lg_buf_printf(&b, "llmgw_key_spend_usd{key=\"%s\"} %.10g\n", kl, ks->spend);
	}
	if (gw->rs) { /* router health: per target and per provider */
		static const char g[][48] = {"llmgw_target_ttft_seconds", "Smoothed time to first token.",
		                                "llmgw_target_tokens_per_second", "Smoothed output tokens per second.",
		                                "llmgw_target_breaker_state", "Circuit breaker: 0 closed, 1 open, 2 half-open.",
		                                "llmgw_target_consecutive_failures", "Failures since the last success.",
		                                "llmgw_provider_in_flight", "Attempts in flight per provider."};
		int q;
		for (q = 0; q < 5; q++) {
			lg_buf_printf(&b, "# HELP %s %s\n# TYPE %s gauge\n", g[2 * q], g[2 * q + 1], g[2 * q]);
			for (i = 0; i < 256; i++) {
				const struct lg_health *h;
				for (h = gw->rs->tab[i]; h; h = h->next) {
					char tl[256];
					int is_prov = strchr(h->id, '/') == NULL;
					if ((q == 4) != is_prov || !lg_route_health_live(gw->cfg, h)) continue;
					lg_acct_label(tl, sizeof tl, h->id);
					lg_buf_printf(&b, "%s{%s=\"%s\"} %.6g\n", g[2 * q], is_prov ? "provider" : "target", tl,
					              q == 0 ? h->ttft / 1000.0 : q == 1 ? h->tps : q == 2 ? (double)h->state
					              : q == 3 ? (double)h->fails : (double)h->inflight);
				}
			}
		}
		lg_buf_printf(&b, "# HELP llmgw_affinity_hits_total Requests kept on their prompt-cache target.\n"
		                  "# TYPE llmgw_affinity_hits_total counter\nllmgw_affinity_hits_total %llu\n",
		              gw->rs->aff_hits);
	}
	lg_buf_printf(&b, "# HELP llmgw_info Version of the running gateway.\n# TYPE llmgw_info gauge\n"
	                  "llmgw_info{version=\"%s\"} 1\n", LLMGW_VERSION);
	lg_st_redis_metrics(gw, &b);
	lg_resp_send(r, 200, "text/plain; version=0.0.4", b.p, b.len, NULL);
	lg_buf_free(&b);
}

/* The request body tokenized into r->j and indexed (r->tk): 0, or -1
 * when it is not a JSON object (answered with a 400). */
static int lg_srv_body_json(struct lg_req *r)
{
	struct lg_json *j = &r->j;
	const char *s = r->body;
	int k;
	memset(j, 0, sizeof *j);
	j->cap = (uint32_t)LG_MIN(r->body_len / 6 + 32, (size_t)LLMGW_JSON_TOKENS); /* a guess: one pass mostly */
	if (r->keep_jt && r->keep_jcap >= j->cap) { /* the array a previous request left */
		j->t = r->keep_jt;
		j->cap = r->keep_jcap;
		r->keep_jt = NULL;
	} else {
		j->t = (struct lg_jtok *)malloc((size_t)j->cap * sizeof *j->t);
	}
	k = j->t ? lg_json_parse(j, s, r->body_len) : LG_JSON_NOMEM;
	if (k == LG_JSON_NOMEM) { /* count, then the exact array */
		struct lg_jtok *nt, *guess = j->t;
		j->t = NULL;
		k = lg_json_parse(j, s, r->body_len);
		j->t = guess; /* freed with the request if what follows fails */
		if (k > 0) {
			nt = (struct lg_jtok *)realloc(guess, (size_t)k * sizeof *nt);
			if (!nt) {
				lg_resp_error(r, 500, NULL, "out of memory");
				return -1;
			}
			j->t = nt;
			j->cap = (uint32_t)k;
			k = lg_json_parse(j, s, r->body_len);
		}
	}
	if (k <= 0) {
		if (r->body_len == 0)
			lg_resp_error(r, 400, NULL, "request body is empty: a JSON object is expected");
		else
			lg_resp_error(r, 400, NULL, "malformed JSON in the request body at byte offset %zu: %s",
			              j->err_off, j->err ? j->err : "invalid");
		return -1;
	}
	if (j->t[0].type != LG_J_OBJ) {
		lg_resp_error(r, 400, NULL, "the request body must be a JSON object");
		return -1;
	}
	lg_req_index(r);
	return 0;
}

/* POST /v1/messages/count_tokens: the prompt's tokens as Anthropic counts
 * them, estimated here (no upstream is asked): a token per 4 bytes of the
 * system prompt, the messages and the tool definitions as JSON, plus 4 a
 * message (its role and framing) -- the estimate budgets use for text. */
/* count_tokens without an Anthropic target: about 4 bytes a token of the
 * system, the tools and the messages' JSON, and 4 a message. */
static void lg_srv_count_est(struct lg_req *r)
{
	const struct lg_json *j = &r->j;
	int sys, tools, msgs = r->tk[LG_TK_MESSAGES];
	int64_t n = 0;
	char out[64];
	sys = lg_json_get(j, r->body, 0, "system");
	tools = lg_json_get(j, r->body, 0, "tools");
	if (sys >= 0) n += ((int64_t)lg_json_span(j, r->body, sys).n + 3) / 4;
	if (tools >= 0) n += ((int64_t)lg_json_span(j, r->body, tools).n + 3) / 4;
	n += ((int64_t)lg_json_span(j, r->body, msgs).n + 3) / 4 + 4 * (int64_t)j->t[msgs].size;
	snprintf(out, sizeof out, "{\"input_tokens\":%lld}\n", (long long)n);
	r->served = NULL;
	lg_resp_send(r, 200, "application/json", out, strlen(out), "llmgw-estimated: true\r\n");
}

static void lg_srv_count_tokens(struct lg_req *r)
{
	const struct lg_json *j = &r->j;
	const struct lg_model *m;
	int t, k, msgs;
	const char *name;
	if (lg_srv_body_json(r)) return;
	t = r->tk[LG_TK_MODEL];
	if (lg_json_type(j, t) != LG_J_STR || j->t[t].end == j->t[t].start) {
		lg_resp_error(r, 400, NULL, t < 0 ? "field 'model' is missing" : "field 'model' must be a non-empty string");
		return;
	}
	msgs = r->tk[LG_TK_MESSAGES];
	if (lg_json_type(j, msgs) != LG_J_ARR) {
		lg_resp_error(r, 400, NULL, msgs < 0 ? "field 'messages' is missing" : "field 'messages' must be an array");
		return;
	}
	name = lg_route_strdup(r, t);
	if (name && lg_route_key_allows(r->key, name) && !lg_cfg_find_model(r->cfg, lg_strz(name)) && strchr(name, '/')) {
		/* PROVIDER/MODEL of a direct provider: Anthropic counts it, others are estimated */
		const char *sl = strchr(name, '/');
		const struct lg_provider *p = lg_cfg_find_provider(r->cfg, name, (size_t)(sl - name));
		if (p && p->direct && sl[1]) {
			r->model_req = name;
			if (p->row->wire == LG_WIRE_ANTHROPIC) lg_st_admit(r);
			else lg_srv_count_est(r);
			return;
		}
	}
	if (!name || !(m = lg_cfg_find_model(r->cfg, lg_strz(name))) || !lg_route_key_allows(r->key, name)) {
		lg_resp_error(r, 404, NULL, "no such model: '%.*s'", (int)LG_MIN(j->t[t].end - j->t[t].start, 200),
		              r->body + j->t[t].start);
		return;
	}
	r->model_req = name;
	for (k = 0; k < m->nt; k++)
		if (m->t[k].prov->row->wire == LG_WIRE_ANTHROPIC) { /* Anthropic counts: routed to it, natively */
			lg_st_admit(r);
			return;
		}
	lg_srv_count_est(r);
}

/* Does the requested model have a target that takes the Responses API natively? */
static int lg_srv_rs_native(const struct lg_req *r)
{
	const struct lg_model *m = lg_cfg_find_model(r->cfg, lg_strz(r->model_req));
	int k;
	for (k = 0; m && k < m->nt; k++)
		if (m->t[k].prov->responses) return 1;
	return 0;
}

/* POST /v1/chat/completions, /v1/embeddings, /v1/messages and /v1/responses. */
static void lg_srv_completion(struct lg_req *r)
{
	struct lg_json *j = &r->j;
	const char *s = r->body;
	int t;
	if (lg_srv_body_json(r)) return;
	t = r->tk[LG_TK_MODEL];
	if (lg_json_type(j, t) != LG_J_STR || j->t[t].end == j->t[t].start) {
		lg_resp_error(r, 400, NULL, t < 0 ? "field 'model' is missing" : "field 'model' must be a non-empty string");
		return;
	}
	if (!(r->model_req = lg_route_strdup(r, t)) || strlen(r->model_req) > 256) {
		lg_resp_error(r, 400, NULL, "field 'model' is not a valid model name");
		return;
	}
	if (r->ep == LG_EP_CHAT || r->ep == LG_EP_MESSAGES) {
		t = r->tk[LG_TK_MESSAGES];
		if (lg_json_type(j, t) != LG_J_ARR || j->t[t].size == 0) {
			lg_resp_error(r, 400, NULL, t < 0 ? "field 'messages' is missing"
			                                  : "field 'messages' must be a non-empty array");
			return;
		}
	} else if (r->tk[LG_TK_INPUT] < 0) {
		lg_resp_error(r, 400, NULL, "field 'input' is missing");
		return;
	}
	t = r->tk[LG_TK_STREAM];
	if (t >= 0 && lg_json_type(j, t) != LG_J_TRUE && lg_json_type(j, t) != LG_J_FALSE &&
	    lg_json_type(j, t) != LG_J_NULL) {
		lg_resp_error(r, 400, NULL, "field 'stream' must be a boolean");
		return;
	}
	r->stream = r->ep != LG_EP_EMBED && lg_json_truthy(j, t);
	r->want_usage = lg_json_truthy(j, lg_json_get(j, s, r->tk[LG_TK_STREAM_OPTIONS], "include_usage")) ||
	                lg_json_truthy(j, lg_json_get(j, s, r->tk[LG_TK_USAGE], "include"));
	t = r->tk[LG_TK_MODELS];
	if (t >= 0) {
		uint32_t i;
		if (lg_json_type(j, t) != LG_J_ARR) {
			lg_resp_error(r, 400, NULL, "field 'models' must be an array of model names");
			return;
		}
		for (i = 0; i < j->t[t].size; i++)
			if (lg_json_type(j, lg_json_at(j, t, i)) != LG_J_STR) {
				lg_resp_error(r, 400, NULL, "field 'models' element %u is not a string", i);
				return;
			}
	}
	t = r->tk[LG_TK_PROVIDER];
	if (t >= 0 && lg_json_type(j, t) != LG_J_OBJ) {
		lg_resp_error(r, 400, NULL, "field 'provider' must be an object");
		return;
	}
	t = r->tk[LG_TK_USER];
	if (lg_json_type(j, t) == LG_J_STR && j->t[t].end - j->t[t].start <= 256) r->user = lg_route_strdup(r, t);
	/* Responses: its canonical request now, so what cannot be translated is
	 * refused before any budget is held, unless a target takes it natively
	 * (then only an attempt that translates refuses it) */
	if (r->ep == LG_EP_COMPACT) r->compact = 1, r->stream = 0;
	if (LG_EP_RS(r->ep) && !lg_srv_rs_native(r) && !lg_canon(r)) {
		lg_resp_error(r, 400, NULL, "%s", r->canon_err);
		return;
	}
	lg_st_admit(r); /* the plan, the key's limits, the reservation: lg_srv_admitted */
}

/* The store's answer to admit: route the request, or say why not. */
static void lg_srv_admitted(struct lg_req *r, int status, int retry, const char *msg)
{
	char ra[40];
	if (!status) {
		lg_route_next(r);
		return;
	}
	if (retry) snprintf(ra, sizeof ra, "Retry-After: %d\r\n", retry);
	lg_resp_error(r, status, retry ? ra : NULL, "%s", msg);
}

/* The body is complete: run the endpoint. */
static void lg_srv_dispatch(struct lg_req *r)
{
	struct lg_conn *c = r->cc;
	r->body = lg_buf_data(&c->in) + r->head_len;
	r->bytes_in = r->head_len + (size_t)(r->chunked ? r->body_len : (size_t)r->clen);
	c->cstate = LG_CS_BUSY;
	lg_timer_clear(c->gw, &c->tm);
	switch (r->ep) {
	case LG_EP_HEALTH: lg_srv_health(r); break;
	case LG_EP_MODELS:
	case LG_EP_MODEL: lg_srv_models(r); break;
	case LG_EP_COUNT: lg_srv_count_tokens(r); break;
	case LG_EP_RELOAD: lg_srv_admin_reload(r); break;
	case LG_EP_KEY: lg_st_view(r, lg_srv_key); break; /* shared state: read through the store */
	case LG_EP_GEN: lg_st_view(r, lg_srv_generation); break;
	case LG_EP_METRICS: lg_st_view(r, lg_srv_metrics); break;
	case LG_EP_MESSAGES: lg_srv_completion(r); break;
	default:
		if (LG_EP_DASH(r->ep)) lg_st_view(r, lg_dash_serve); /* section 14 */
		else lg_srv_completion(r);
	}
	if (!r->finished && (r->status || !r->cc)) lg_srv_finish(r);
}

/* Answers from the head alone and, when a body may follow unread, closes
 * the connection afterwards. */
static LG_COLD void lg_srv_head_error(struct lg_req *r, int status, const char *extra, const char *msg)
{
	r->close = r->close || r->clen > 0 || r->chunked;
	r->cc->cstate = LG_CS_BUSY;
	lg_resp_error(r, status, extra, "%s", msg);
	lg_srv_finish(r);
}

struct lg_route_ent {
	const char *path;
	int ep;
	const char *allow;
	const struct lg_dialect *d; /* the dialect it speaks (NULL: the first row's) */
};

static const struct lg_route_ent lg_srv_paths[] = {
    {"/v1/chat/completions", LG_EP_CHAT, "POST", NULL},
    {"/v1/embeddings", LG_EP_EMBED, "POST", NULL},
    {"/v1/models", LG_EP_MODELS, "GET, HEAD", NULL},
    {"/health", LG_EP_HEALTH, "GET, HEAD", NULL},
    {"/admin/reload", LG_EP_RELOAD, "POST", NULL},
    {"/v1/messages", LG_EP_MESSAGES, "POST", LG_DIALECT_ANTHROPIC},
    {"/v1/messages/count_tokens", LG_EP_COUNT, "POST", LG_DIALECT_ANTHROPIC},
    {"/v1/responses", LG_EP_RESPONSES, "POST", LG_DIALECT_RESPONSES},
    {"/v1/responses/compact", LG_EP_COMPACT, "POST", LG_DIALECT_RESPONSES},
    {"/", LG_EP_HEALTH, "GET, HEAD", NULL},
    {"/v1/key", LG_EP_KEY, "GET, HEAD", NULL},
    {"/v1/generation", LG_EP_GEN, "GET, HEAD", NULL},
    {"/metrics", LG_EP_METRICS, "GET, HEAD", NULL},
    {"/admin/overview", LG_EP_A_OVERVIEW, "GET, HEAD", NULL},
    {"/admin/series", LG_EP_A_SERIES, "GET, HEAD", NULL},
    {"/admin/keys", LG_EP_A_KEYS, "GET, HEAD", NULL},
    {"/admin/requests", LG_EP_A_REQUESTS, "GET, HEAD", NULL},
    {"/admin/generation", LG_EP_A_GEN, "GET, HEAD", NULL},
    {"/admin/health", LG_EP_A_HEALTH, "GET, HEAD", NULL},
    {"/ui", LG_EP_UI, "GET, HEAD", NULL},
    {"/ui/app.js", LG_EP_UI_JS, "GET, HEAD", NULL},
    {"/ui/app.css", LG_EP_UI_CSS, "GET, HEAD", NULL},
    {"/ui/login", LG_EP_UI_LOGIN, "POST", NULL},
    {"/ui/logout", LG_EP_UI_LOGOUT, "POST", NULL},
};

/* A complete head: route, authenticate, size the body. */
static void lg_srv_head(struct lg_conn *c, struct lg_http *h, int hl)
{
	struct llmgw *gw = c->gw;
	struct lg_req *r = lg_srv_new_req(c, h->minor);
	lg_str path = h->target;
	const struct lg_route_ent *re = NULL;
	size_t i;
	int fr, st, is_get, is_post;
	char msg[512], allow[64];
	if (!r) {
		lg_conn_close(c);
		return;
	}
	r->head_len = (size_t)hl;
	r->head_only = lg_str_eq(h->method, "HEAD");
	fr = lg_http_framing(h, 1);
	if (!fr) { /* RFC 9112 3.2: exactly one Host in HTTP/1.1, at most one in 1.0 */
		int nhost = 0;
		for (i = 0; i < (size_t)h->nh; i++) nhost += lg_str_ieq(h->h[i].name, "host");
		if (nhost > 1 || (nhost == 0 && h->minor >= 1)) {
			h->err = nhost ? "more than one Host header" : "no Host header (HTTP/1.1 requires one)";
			fr = -1;
		}
	}
	if (path.n > 8 &&
	    (lg_str_ieqn(lg_str_of(path.p, 7), "http://", 7) || lg_str_ieqn(lg_str_of(path.p, 8), "https://", 8))) {
		/* absolute form (RFC 9112 3.2.2): the path is what follows the authority */
		size_t at = path.p[4] == ':' ? 7 : 8;
		while (at < path.n && path.p[at] != '/' && path.p[at] != '?') at++;
		path = at < path.n ? lg_str_of(path.p + at, path.n - at) : lg_str_of("/", 1);
		h->target = path;
	}
	r->close = h->close;
	r->clen = h->clen;
	r->chunked = h->chunked;
	if (fr) {
		r->close = 1;
		snprintf(msg, sizeof msg, "malformed request: %s", h->err);
		lg_srv_head_error(r, fr == -2 ? 501 : fr == -3 ? 417 : 400, NULL, msg);
		return;
	}
	for (i = 0; i < path.n && path.p[i] != '?'; i++) {
	}
	path.n = i;
	for (i = 0; i < LG_COUNTOF(lg_srv_paths); i++)
		if (lg_str_eq(path, lg_srv_paths[i].path)) re = &lg_srv_paths[i];
	if (!re && path.n > 11 && memcmp(path.p, "/v1/models/", 11) == 0) { /* GET /v1/models/{id} */
		static const struct lg_route_ent model = {"/v1/models/{id}", LG_EP_MODEL, "GET, HEAD", NULL};
		re = &model;
	}
	/* the Anthropic paths answer in its dialect from the first error on */
	if ((path.n >= 12 && memcmp(path.p, "/v1/messages", 12) == 0) ||
	    ((!re || re->ep == LG_EP_MODELS || re->ep == LG_EP_MODEL) && lg_http_get(h, "anthropic-version").n))
		r->d = LG_DIALECT_ANTHROPIC;
	is_get = lg_str_eq(h->method, "GET") || r->head_only;
	is_post = lg_str_eq(h->method, "POST");
	if (!re) {
		snprintf(msg, sizeof msg, "no such endpoint: %.*s %.*s", (int)h->method.n, h->method.p,
		         (int)LG_MIN(path.n, 200), path.p);
		lg_srv_head_error(r, 404, NULL, msg);
		return;
	}
	if (!(is_get && strstr(re->allow, "GET")) && !(is_post && strstr(re->allow, "POST"))) {
		static const char known[][8] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS",
		                                    "PATCH", "TRACE", "CONNECT"};
		int k, std = 0;
		for (k = 0; k < (int)LG_COUNTOF(known); k++) std |= lg_str_eq(h->method, known[k]);
		snprintf(allow, sizeof allow, "Allow: %s\r\n", re->allow);
		snprintf(msg, sizeof msg, "method %.*s is not %s for %s (allowed: %s)", (int)LG_MIN(h->method.n, 32),
		         h->method.p, std ? "allowed" : "implemented", re->path, re->allow);
		lg_srv_head_error(r, std ? 405 : 501, allow, msg);
		return;
	}
	if (re->ep < 0) {
		snprintf(msg, sizeof msg, "%s is not implemented by this version of llmgw", re->path);
		lg_srv_head_error(r, 501, NULL, msg);
		return;
	}
	r->ep = re->ep;
	if (re->d) r->d = re->d; /* else the default, or Anthropic's for its SDKs (above) */
	msg[0] = 0;
	if (r->ep == LG_EP_METRICS && gw->cfg->metrics == LG_METRICS_OFF) {
		lg_srv_head_error(r, 404, NULL, "metrics are off (metrics = off)");
		return;
	}
	if (r->ep == LG_EP_RELOAD || LG_EP_DASH_ADMIN(r->ep) || (r->ep == LG_EP_METRICS && gw->cfg->metrics == LG_METRICS_ADMIN)) {
		/* the admin key, not a client key */
		lg_str a = lg_http_get(h, "authorization"), x = lg_http_get(h, "x-api-key"), sec = x;
		const char *ak = gw->cfg->admin_key;
		unsigned char h1[32], h2[32];
		if (a.n > 7 && lg_str_ieq(lg_str_of(a.p, 7), "bearer ")) sec = lg_str_trim(lg_str_of(a.p + 7, a.n - 7));
		lg_sha256(sec.p, sec.n, h1);
		lg_sha256(ak ? ak : "", ak ? strlen(ak) : 0, h2);
		if (!ak || !*ak)
			snprintf(msg, sizeof msg, "%s needs admin_key in [gateway]%s", re->path,
			         r->ep == LG_EP_METRICS ? " (or metrics = public)" : "");
		else if ((!sec.n || !lg_ct_eq(h1, h2, 32)) && !(LG_EP_DASH(r->ep) && lg_dash_cookie_ok(gw, h)))
			snprintf(msg, sizeof msg, "%s: missing or wrong admin key", re->path);
		if (msg[0] && r->ep == LG_EP_UI) { /* the page: its login form instead */
			r->cc->cstate = LG_CS_BUSY;
			lg_dash_login(r, 401, ak && *ak ? "Log in with the admin key." : "The dashboard needs admin_key in [gateway].");
			lg_srv_finish(r);
			return;
		}
		if (msg[0]) {
			lg_srv_head_error(r, 401, LG_EP_DASH(r->ep) ? LG_DASH_HDRS : NULL, msg);
			return;
		}
	} else if (LG_EP_DASH(r->ep)) {
		/* login, logout, the style sheet: no key needed */
	} else if (r->ep != LG_EP_HEALTH && r->ep != LG_EP_METRICS && (st = lg_srv_auth(r, h, msg, sizeof msg))) {
		lg_srv_head_error(r, st, NULL, msg);
		return;
	}
	if (r->ep == LG_EP_MESSAGES || r->ep == LG_EP_COUNT) { /* for native Anthropic targets, as they came */
		lg_str ab = lg_http_get(h, "anthropic-beta");
		if (ab.n && ab.n < 16384) r->anth_beta = lg_arena_strn(&r->a, ab.p, ab.n); /* the head limit bounds it */
	}
	if (LG_EP_DASH(r->ep)) {
		lg_str ae = lg_http_get(h, "accept-encoding");
		r->gzip_ok = lg_memmem(ae.p, ae.n, "gzip");
	}
	if (r->ep == LG_EP_GEN || r->ep == LG_EP_MODELS || r->ep == LG_EP_MODEL || r->ep == LG_EP_MESSAGES ||
	    r->ep == LG_EP_COUNT || LG_EP_DASH(r->ep)) { /* keep the path's rest and query (?beta=true goes on to Anthropic) */
		lg_str q = h->target;
		size_t qi;
		for (qi = 0; qi < q.n && q.p[qi] != '?'; qi++) {
		}
		r->query = lg_arena_strn(&r->a, q.p + qi, q.n - qi);
		if (r->ep == LG_EP_MODEL) r->model_req = lg_arena_strn(&r->a, q.p + 11, qi - 11);
	}
	if (r->clen > (int64_t)gw->cfg->max_body) {
		snprintf(msg, sizeof msg, "request body of %lld bytes is larger than max_body (%zu bytes)",
		         (long long)r->clen, gw->cfg->max_body);
		r->close = 1;
		lg_srv_head_error(r, 413, NULL, msg);
		return;
	}
	if (h->expect100 && (r->clen > 0 || r->chunked)) {
		lg_buf_addz(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
		if (lg_conn_flush(c) < 0) {
			lg_conn_close(c);
			return;
		}
	}
	c->cstate = LG_CS_BODY;
	c->body_end = gw->now + gw->cfg->body_timeout; /* the whole body by then, however it trickles */
	lg_timer_set(gw, &c->tm, LG_MIN(gw->cfg->idle_timeout, gw->cfg->body_timeout));
}

/* Checks whether the body is complete (decoding chunks in place). 1: yes,
 * 0: need more, -1: answered with an error. */
static int lg_srv_body(struct lg_conn *c, struct lg_req *r)
{
	size_t have = lg_buf_used(&c->in) - r->head_len;
	if (!r->chunked) {
		if (r->clen <= 0) return 1;
		return have >= (size_t)r->clen ? (r->body_len = (size_t)r->clen, 1) : 0;
	}
	{
		char *p = lg_buf_data(&c->in) + r->head_len + r->body_len;
		size_t raw = have - r->body_len, n = raw;
		long left = lg_chunked_decode(&r->ck, p, &n);
		if (left == LG_HTTP_ERR) {
			r->close = 1;
			lg_srv_head_error(r, 400, NULL, "malformed chunked request body");
			return -1;
		}
		r->body_len += n;
		c->in.len -= raw - n - (left > 0 ? (size_t)left : 0);
		/* a chunk that declares more than max_body is refused at once */
		if (r->body_len + (r->ck.st == LG_CK_DATA ? r->ck.rem : 0) > r->cfg->max_body) {
			char msg[160];
			snprintf(msg, sizeof msg, "request body is larger than max_body (%zu bytes)", r->cfg->max_body);
			r->close = 1;
			lg_srv_head_error(r, 413, NULL, msg);
			return -1;
		}
		return left >= 0;
	}
}

/* Parses and runs whatever complete requests the input buffer holds. */
static void lg_srv_advance(struct lg_conn *c)
{
	struct llmgw *gw = c->gw;
	c->advancing = 1;
	while (!(c->flags & (LG_F_DEAD | LG_F_CLOSE_AFTER))) {
		if (c->cstate == LG_CS_HEAD) {
			struct lg_http h;
			size_t used = lg_buf_used(&c->in);
			int hl;
			if (!used) break;
			if (lg_buf_used(&c->out) > LLMGW_STREAM_HIGHWATER) break; /* let the client read first */
			if (!lg_http_head_end(lg_buf_data(&c->in), used, c->scan)) {
				/* still incomplete: reject a hopeless request line early */
				hl = lg_http_parse_req(lg_buf_data(&c->in), used, &h);
				c->scan = used;
				if (hl == LG_HTTP_ERR) {
					struct lg_req *r = lg_srv_new_req(c, 1);
					if (!r) break;
					r->close = 1;
					lg_srv_head_error(r, 400, NULL, "malformed request line");
					continue;
				}
				if (used >= gw->cfg->max_header) {
					struct lg_req *r = lg_srv_new_req(c, 1);
					if (!r) break;
					r->close = 1;
					lg_srv_head_error(r, 431, NULL, "request head is larger than max_header");
					continue;
				}
				break;
			}
			hl = lg_http_parse_req(lg_buf_data(&c->in), used, &h);
			if (hl == LG_HTTP_TOOMANY || (hl > 0 && (size_t)hl > gw->cfg->max_header)) {
				struct lg_req *r = lg_srv_new_req(c, 1);
				if (!r) break;
				r->close = 1;
				lg_srv_head_error(r, 431, NULL, hl == LG_HTTP_TOOMANY ? "too many header lines"
				                                                       : "request head is larger than max_header");
				continue;
			}
			if (hl < 0) {
				struct lg_req *r = lg_srv_new_req(c, 1);
				char msg[160];
				if (!r) break;
				r->close = 1;
				snprintf(msg, sizeof msg, "malformed request: %s", h.err ? h.err : "bad head");
				lg_srv_head_error(r, 400, NULL, msg);
				continue;
			}
			lg_srv_head(c, &h, hl);
			continue;
		}
		if (c->cstate == LG_CS_BODY) {
			struct lg_req *r = c->req;
			int k = lg_srv_body(c, r);
			if (k == 0) break;
			if (k < 0) continue;
			lg_srv_dispatch(r);
			continue;
		}
		break; /* busy: the request is in flight */
	}
	c->advancing = 0;
	if (!(c->flags & LG_F_DEAD)) lg_conn_events(c);
}

/* The client went away or broke the protocol: its request ends (499). */
static LG_COLD void lg_srv_drop(struct lg_conn *c)
{
	struct lg_req *r = c->req;
	if (r) {
		r->cc = NULL;
		c->req = NULL;
		if (!r->status) r->status = 499;
		lg_srv_finish(r);
	}
	lg_conn_close(c);
}

static void lg_srv_io(struct lg_conn *c, int revents)
{
	struct llmgw *gw = c->gw;
	if (revents & POLLOUT) {
		if (lg_conn_flush(c) < 0) {
			lg_srv_drop(c);
			return;
		}
		if (!lg_buf_used(&c->out) && (c->flags & LG_F_CLOSE_AFTER) && !c->req) {
			lg_conn_close(c);
			return;
		}
		if (!c->req) lg_blk_give(c->gw, &c->out);
		if (c->req && c->req->up.c && (c->req->up.c->flags & LG_F_NOREAD)) { /* paused by this client */
			struct lg_upreq *u = &c->req->up;
			if (lg_buf_used(&c->out) < LLMGW_STREAM_HIGHWATER / 2) { /* it reads again: so does the upstream */
				u->c->flags &= ~(unsigned)LG_F_NOREAD;
				lg_timer_clear(gw, &c->tm);
				if (u->state == LG_U_BODY) lg_timer_set(gw, &u->tm, u->idle_ms);
				lg_up_events(u);
			} else {
				lg_timer_set(gw, &c->tm, c->req->cfg->send_timeout); /* bytes left: it is reading */
			}
		}
		if (!c->req && lg_buf_used(&c->in) && c->cstate == LG_CS_HEAD) lg_srv_advance(c);
	}
	if (revents & (POLLIN | POLLHUP | POLLERR)) {
		size_t max;
		long n;
		int had = lg_buf_used(&c->in) > 0;
		if (c->cstate == LG_CS_HEAD)
			max = gw->cfg->max_header + 1;
		else if (c->cstate == LG_CS_BODY)
			max = c->req->head_len + (c->req->chunked ? gw->cfg->max_body + 65536 : (size_t)c->req->clen);
		else
			max = 0; /* in flight: the body must not move; read only into spare room */
		n = lg_io_read(c, max);
		if (n == 0 || n == -1) {
			lg_srv_drop(c);
			return;
		}
		if (n == -2) {
			if (revents & (POLLHUP | POLLERR)) {
				lg_srv_drop(c);
				return;
			}
			if (c->cstate == LG_CS_BUSY && !(c->tls && lg_tls_handshaking(c->tls)))
				c->flags |= LG_F_NOREAD; /* no room: stop polling until done */
			if (c->tls && lg_conn_flush(c) < 0) { /* handshake records to send */
				lg_srv_drop(c);
				return;
			}
			lg_conn_events(c);
			return;
		}
		if (c->cstate == LG_CS_HEAD && !had) { /* a new request starts: header_timeout */
			c->head_start = gw->now;
			lg_timer_set(gw, &c->tm, gw->cfg->header_timeout);
		} else if (c->cstate == LG_CS_BODY) {
			lg_timer_set(gw, &c->tm, LG_MAX(0, LG_MIN(gw->cfg->idle_timeout, c->body_end - gw->now)));
		}
		if (c->cstate != LG_CS_BUSY) lg_srv_advance(c);
	}
}

static LG_COLD void lg_srv_timeout(struct llmgw *gw, struct lg_timer *t)
{
	struct lg_conn *c = (struct lg_conn *)(void *)((char *)t - offsetof(struct lg_conn, tm));
	struct lg_req *r;
	const char *msg;
	if (c->cstate == LG_CS_BUSY || (c->req && c->cstate != LG_CS_BODY)) {
		if (lg_buf_used(&c->out)) { /* a client that stopped reading: its fault, not the upstream's */
			if (c->req) {
				c->req->status = 499;
				snprintf(c->req->errmsg, sizeof c->req->errmsg,
				         "the client accepted no bytes for %lld ms (send_timeout)",
				         (long long)c->req->cfg->send_timeout);
				LG_LOG(gw, LG_LOG_INFO, "request %s: %s; closed", c->req->id, c->req->errmsg);
			}
			lg_srv_drop(c);
		}
		return;
	}
	if ((c->cstate == LG_CS_HEAD && !lg_buf_used(&c->in)) || gw->stopping) {
		lg_srv_drop(c); /* idle keep-alive connection */
		return;
	}
	r = c->req ? c->req : lg_srv_new_req(c, 1);
	if (!r) {
		lg_conn_close(c);
		return;
	}
	r->close = 1;
	if (c->cstate == LG_CS_HEAD)
		msg = "request head not received within header_timeout";
	else if (gw->now >= c->body_end)
		msg = "request body not received within body_timeout";
	else
		msg = "request body stalled longer than idle_timeout";
	LG_LOG(gw, LG_LOG_DEBUG, "client %s: %s", c->peer, msg); /* the access log has it too */
	lg_srv_head_error(r, 408, NULL, msg);
}

static void lg_srv_accept(struct llmgw *gw, int lfd, int tls)
{
	int k;
	for (k = 0; k < LLMGW_ACCEPT_BURST; k++) {
		struct sockaddr_storage sa;
		socklen_t sl = sizeof sa;
		int fd = accept(lfd, (struct sockaddr *)&sa, &sl), one = 1;
		struct lg_conn *c;
		if (fd < 0) return;
		if (lg_set_nonblock(fd) < 0) {
			close(fd);
			continue;
		}
		if ((gw->sh ? lg_atomic_get(&gw->sh->nclients) : gw->nclients) >= gw->cfg->max_connections ||
		    gw->stopping) {
			static const char body[] =
			    "{\"error\":{\"message\":\"too many connections (max_connections)\",\"type\":"
			    "\"no_provider_available\",\"code\":503}}\n";
			char busy[512];
			int bn = snprintf(busy, sizeof busy,
			                  "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
			                  "Connection: close\r\nContent-Length: %u\r\n\r\n%s",
			                  (unsigned)(sizeof body - 1), body);
			/* a TLS client would take plain text for a broken record: it is only closed */
			ssize_t w = tls ? 0 : send(fd, busy, (size_t)bn, MSG_NOSIGNAL);
			LG_UNUSED(w);
			close(fd);
			gw->nrefused++;
			if (gw->now - gw->refused_ms >= 1000) { /* at most a line a second under a flood */
				if (gw->stopping)
					LG_LOG(gw, LG_LOG_WARN, "connection refused: stopping (%lu since the last such line)",
					       gw->nrefused);
				else
					LG_LOG(gw, LG_LOG_WARN, "connection refused: max_connections (%ld) reached (%lu since the "
					       "last such line)", gw->cfg->max_connections, gw->nrefused);
				gw->refused_ms = gw->now;
				gw->nrefused = 0;
			}
			continue;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		c = lg_conn_new(gw, fd, LG_ROLE_CLIENT, lg_srv_io);
		if (!c) {
			close(fd);
			continue;
		}
		c->tm.fn = lg_srv_timeout;
		c->cstate = LG_CS_HEAD;
		lg_buf_init(&c->in, 0);
		lg_buf_init(&c->out, 0);
		lg_timer_set(gw, &c->tm, gw->cfg->header_timeout); /* covers the TLS handshake too */
#if LLMGW_TLS
		if (tls && (!gw->cfg->nchain || !(c->tls = lg_tls_server_new(gw->cfg)))) {
			lg_conn_close(c);
			continue;
		}
		if (c->tls) { /* the engine keeps pointers into this snapshot */
			c->tlscfg = gw->cfg;
			lg_cfg_ref(gw->cfg);
		}
#else
		LG_UNUSED(tls);
#endif
		lg_conn_events(c);
	}
}

/* ===== 16. Public API ================================================== */

struct llmgw *llmgw_new(void)
{
	struct llmgw *gw = (struct llmgw *)calloc(1, sizeof *gw);
	if (!gw) return NULL;
	gw->log_level = LG_LOG_INFO;
	gw->logfd = -1;
	gw->st = &lg_st_local;
	gw->wake[0] = gw->wake[1] = -1;
	if (pipe(gw->wake) < 0 || lg_set_nonblock(gw->wake[0]) || lg_set_nonblock(gw->wake[1])) {
		llmgw_free(gw);
		return NULL;
	}
	gw->cappfd = 64;
	gw->pfd = (struct pollfd *)calloc((size_t)gw->cappfd, sizeof *gw->pfd);
	gw->conns = (struct lg_conn **)calloc((size_t)gw->cappfd, sizeof *gw->conns);
	if (!gw->pfd || !gw->conns) {
		llmgw_free(gw);
		return NULL;
	}
	gw->pfd[0].fd = gw->wake[0];
	gw->pfd[0].events = POLLIN;
	gw->npfd = gw->nfixed = 1;
	gw->rng = (uint64_t)lg_wall_ms() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)gw;
	if (!gw->rng) gw->rng = 0x9E3779B97F4A7C15ULL;
	lg_buf_init(&gw->logbuf, 0);
	gw->now = lg_now_ms();
	return gw;
}

const char *llmgw_version(void) { return LLMGW_VERSION; }

LG_COLD int llmgw_load_string(struct llmgw *gw, const char *text, const char *name, char *err, size_t errlen)
{
	struct lg_cfg *c = lg_cfg_parse(text, strlen(text), name ? name : "(string)", err, errlen);
	if (!c) return -1;
	if (lg_tls_setup(c, err, errlen)) {
		lg_cfg_free(c);
		return -1;
	}
	return lg_srv_install(gw, c, err, errlen);
}

LG_COLD int llmgw_load_file(struct llmgw *gw, const char *path, char *err, size_t errlen)
{
	struct lg_cfg *c = lg_cfg_load(path, err, errlen);
	char *p;
	if (!c) return -1;
	if (lg_srv_install(gw, c, err, errlen)) return -1;
	if (!gw->cfg_path || strcmp(gw->cfg_path, path) != 0) {
		p = (char *)malloc(strlen(path) + 1);
		if (p) {
			strcpy(p, path);
			free(gw->cfg_path);
			gw->cfg_path = p;
		}
	}
	return 0;
}

/* A listening socket on sa (from lg_cfg_listen_addr); spec names it in errors. */
static LG_COLD int lg_listen_open(const char *spec, const struct sockaddr_storage *sa, socklen_t sl, int reuseport,
                          char *err, size_t errlen)
{
	int fd, one = 1;
	fd = socket(sa->ss_family, SOCK_STREAM, 0);
	if (fd < 0) {
		snprintf(err, errlen, "listen %s: %s", spec, strerror(errno));
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
#ifdef SO_REUSEPORT
	if (reuseport) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
#else
	LG_UNUSED(reuseport);
#endif
	if (bind(fd, (const struct sockaddr *)sa, sl) < 0 || listen(fd, 511) < 0 || lg_set_nonblock(fd) < 0) {
		snprintf(err, errlen, "listen %s: %s", spec, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/* Opens the configured listeners into gw's poll set (SO_REUSEPORT when
 * several loops listen on the same addresses). */
static LG_COLD int lg_listen_all(struct llmgw *gw, int reuseport, char *err, size_t errlen)
{
	int i;
	if (gw->cfg->nlisten > (int)LG_COUNTOF(gw->listen_names) || gw->cfg->nlisten + 1 > gw->cappfd) {
		snprintf(err, errlen, "too many listen addresses");
		return -1;
	}
	for (i = 0; i < gw->cfg->nlisten; i++) {
		/* "ADDR", "ADDR tls" or "ADDR plain", checked by lg_cfg_validate with its line */
		char spec[64];
		const char *sp = strchr(gw->cfg->listen[i], ' '), *why;
		struct sockaddr_storage sa;
		socklen_t sl;
		int fd = -1, tls;
		lg_cpy(spec, sizeof spec, gw->cfg->listen[i]);
		if (sp && (size_t)(sp - gw->cfg->listen[i]) < sizeof spec) spec[sp - gw->cfg->listen[i]] = 0;
		if ((why = lg_cfg_listen_addr(gw->cfg->listen[i], gw->cfg->tls_cert != NULL, &sa, &sl, &tls)) != NULL)
			snprintf(err, errlen, "listen %s: %s", gw->cfg->listen[i], why);
		else
			fd = lg_listen_open(spec, &sa, sl, reuseport, err, errlen);
		if (fd < 0) {
			while (gw->nfixed > 1) close(gw->pfd[--gw->nfixed].fd);
			gw->npfd = gw->nfixed;
			return -1;
		}
		lg_cpy(gw->listen_names[i], sizeof gw->listen_names[i], spec);
		gw->listen_tls[i] = (char)tls;
		gw->pfd[gw->nfixed].fd = fd;
		gw->pfd[gw->nfixed].events = POLLIN;
		gw->conns[gw->nfixed] = NULL;
		gw->nfixed++;
		if (!gw->child) LG_LOG(gw, LG_LOG_INFO, "listening on %s://%s", tls ? "https" : "http", spec);
	}
	gw->npfd = gw->nfixed;
	return 0;
}

static void *lg_worker_main(void *arg)
{
	struct llmgw *w = (struct llmgw *)arg;
	while (llmgw_poll(w, -1)) {
	}
	return NULL;
}

/* Tells the other loops to stop, waits for them (they drain within
 * their shutdown_timeout) and frees them. */
static LG_COLD void lg_workers_join(struct llmgw *gw)
{
	struct lg_shared *sh = gw->sh;
	int k;
	if (!sh || gw->child) return;
	for (k = 1; k < sh->nw; k++) {
		lg_flag_set(&sh->w[k]->stop_req);
		lg_loop_wake(sh->w[k]);
	}
	for (k = sh->nw - 1; k >= 1; k--) {
		pthread_join(sh->th[k], NULL);
		gw->served += sh->w[k]->served;
		lg_lock(gw);
		sh->nw--;
		lg_unlock(gw);
		llmgw_free(sh->w[k]);
		sh->w[k] = NULL;
	}
	if (gw->stopping) LG_LOG(gw, LG_LOG_INFO, "stopped after %llu requests (every loop)", gw->served);
}

/* workers = N: N - 1 more loops, each in its own thread with its own
 * listeners on the same addresses; signals stay with the caller's thread. */
static LG_COLD int lg_workers_start(struct llmgw *gw, int nw, char *err, size_t errlen)
{
	struct lg_shared *sh = (struct lg_shared *)calloc(1, sizeof *sh);
	pthread_mutexattr_t ma;
	int k;
	if (!sh || !lg_acct_of(gw) || (!gw->rs && !(gw->rs = (struct lg_rstate *)calloc(1, sizeof *gw->rs)))) {
		free(sh);
		snprintf(err, errlen, "workers: out of memory");
		return -1;
	}
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
	pthread_mutex_init(&sh->mu, &ma);
	pthread_mutexattr_destroy(&ma);
	sh->w[0] = gw;
	sh->nw = 1;
	sh->cfg = gw->cfg;
	lg_cfg_ref(sh->cfg);
	sh->cfg_gen = gw->cfg_gen;
	sh->seq = gw->seq;
	sh->nclients = gw->nclients;
	gw->sh = sh;
	for (k = 1; k < nw; k++) {
		struct llmgw *w = llmgw_new();
		sigset_t all, old;
		int rc;
		if (!w) {
			snprintf(err, errlen, "workers: out of memory");
			goto fail;
		}
		w->sh = sh;
		w->child = 1;
		w->acct = gw->acct;
		w->rs = gw->rs;
		w->st = gw->st;
		w->cfg = gw->cfg;
		lg_cfg_ref(w->cfg);
		w->log_level = gw->log_level;
		w->cfg_workers = gw->cfg_workers;
		if (gw->cfg_path && (w->cfg_path = (char *)malloc(strlen(gw->cfg_path) + 1)) != NULL)
			strcpy(w->cfg_path, gw->cfg_path);
		if (lg_srv_open_log(w, w->cfg, err, errlen) || lg_listen_all(w, 1, err, errlen)) {
			w->acct = NULL, w->rs = NULL, w->sh = NULL;
			llmgw_free(w);
			goto fail;
		}
		w->started = w->running = 1;
		w->now = lg_now_ms();
		sigfillset(&all); /* the thread starts with every signal blocked */
		pthread_sigmask(SIG_BLOCK, &all, &old);
		lg_lock(gw);
		sh->w[sh->nw] = w;
		rc = pthread_create(&sh->th[sh->nw], NULL, lg_worker_main, w);
		if (rc == 0) sh->nw++;
		lg_unlock(gw);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (rc != 0) {
			snprintf(err, errlen, "workers: cannot start a thread: %s", strerror(rc));
			sh->w[sh->nw] = NULL;
			w->acct = NULL, w->rs = NULL, w->sh = NULL;
			llmgw_free(w);
			goto fail;
		}
	}
	return 0;
fail:
	lg_workers_join(gw);
	return -1;
}

LG_COLD int llmgw_start(struct llmgw *gw, char *err, size_t errlen)
{
	int nw;
	long ncpu;
	if (gw->started) return 0;
	if (!gw->cfg) {
		snprintf(err, errlen, "no configuration loaded");
		return -1;
	}
	gw->cfg_workers = gw->cfg->workers;
	ncpu = gw->cfg->workers ? 0 : sysconf(_SC_NPROCESSORS_ONLN); /* only when asked: it reads /sys */
	nw = gw->cfg->workers ? gw->cfg->workers : (int)(ncpu > 0 ? LG_MIN(ncpu, (long)LG_MAX_WORKERS) : 1);
	if (!LG_ATOMICS) nw = 1; /* a compiler without atomic builtins: one loop */
	if (lg_srv_open_log(gw, gw->cfg, err, errlen)) return -1;
	if (lg_listen_all(gw, nw > 1, err, errlen)) return -1;
	if (gw->cfg->state_dir && *gw->cfg->state_dir &&
	    lg_acct_ledger_open(gw, gw->cfg->state_dir, err, errlen)) {
		while (gw->nfixed > 1) close(gw->pfd[--gw->nfixed].fd);
		gw->npfd = gw->nfixed;
		return -1;
	}
	if (nw > 1 && lg_workers_start(gw, nw, err, errlen)) {
		while (gw->nfixed > 1) close(gw->pfd[--gw->nfixed].fd);
		gw->npfd = gw->nfixed;
		return -1;
	}
	gw->started = gw->running = 1;
	gw->now = lg_now_ms();
	LG_LOG(gw, LG_LOG_INFO, "llmgw %s ready: %d providers, %d models, %d keys, %d event loop%s", LLMGW_VERSION,
	       gw->cfg->nprov, gw->cfg->nmodels, gw->cfg->nkeys, nw, nw > 1 ? "s" : "");
	return 0;
}

void llmgw_stop(struct llmgw *gw)
{
	lg_flag_set(&gw->stop_req);
	lg_loop_wake(gw);
}

void llmgw_reload(struct llmgw *gw)
{
	lg_flag_set(&gw->reload_req);
	lg_loop_wake(gw);
}

/* Stop accepting, close what is idle, let in-flight requests finish. */
static LG_COLD void lg_listen_stop(struct llmgw *gw)
{
	int i;
	if (gw->stopping) return;
	gw->stopping = 1;
	gw->stop_deadline = gw->now + gw->cfg->shutdown_timeout;
	if (gw->sh && !gw->child) { /* the other loops drain too */
		int k;
		lg_lock(gw);
		for (k = 1; k < gw->sh->nw; k++) {
			lg_flag_set(&gw->sh->w[k]->stop_req);
			lg_loop_wake(gw->sh->w[k]);
		}
		lg_unlock(gw);
	}
	if (!gw->child)
		LG_LOG(gw, LG_LOG_INFO, "stopping: %d requests in flight (shutdown_timeout %lld ms)", gw->nreqs,
	       (long long)gw->cfg->shutdown_timeout);
	for (i = 1; i < gw->nfixed; i++)
		if (gw->pfd[i].fd >= 0) {
			close(gw->pfd[i].fd);
			gw->pfd[i].fd = -1;
		}
	for (i = 0; i < LG_ORIG_BUCKETS; i++) {
		struct lg_origin *o;
		for (o = gw->orig[i]; o; o = o->next)
			while (o->idle) {
				struct lg_conn *c = o->idle;
				lg_up_pool_remove(gw, c);
				lg_conn_close(c);
			}
	}
	for (i = gw->nfixed; i < gw->npfd; i++) {
		struct lg_conn *c = gw->conns[i];
		if (c->role != LG_ROLE_CLIENT || (c->flags & LG_F_DEAD)) continue;
		if (c->req)
			c->req->close = 1;
		else if (!lg_buf_used(&c->out))
			lg_srv_drop(c);
		else
			c->flags |= LG_F_CLOSE_AFTER;
	}
}

int llmgw_run(struct llmgw *gw)
{
	char err[512];
	if (!gw->started && llmgw_start(gw, err, sizeof err)) {
		LG_LOG(gw, LG_LOG_ERROR, "%s", err);
		return -1;
	}
	while (llmgw_poll(gw, -1)) {
	}
	return 0;
}

LG_COLD void llmgw_free(struct llmgw *gw)
{
	int i;
	if (!gw) return;
	lg_workers_join(gw); /* workers = N: the other loops first */
	while (gw->reqs) { /* only after a forced stop */
		struct lg_req *r = gw->reqs;
		r->cc = NULL;
		lg_srv_finish(r);
	}
	lg_redis_free(gw); /* before the connections: its own is one of them */
	for (i = gw->npfd - 1; i >= gw->nfixed; i--) lg_conn_free(gw, gw->conns[i]);
	for (i = 1; i < gw->nfixed; i++)
		if (gw->pfd[i].fd >= 0) close(gw->pfd[i].fd);
	while (gw->dead) {
		struct lg_req *r = gw->dead;
		gw->dead = r->next;
		lg_req_destroy(r);
	}
	while (gw->rfree) {
		struct lg_req *r = gw->rfree;
		gw->rfree = r->next;
		lg_req_destroy(r);
	}
	while (gw->nblk) free(gw->blk[--gw->nblk]);
	lg_buf_free(&gw->rd);
	for (i = 0; i < LG_ORIG_BUCKETS; i++)
		while (gw->orig[i]) {
			struct lg_origin *o = gw->orig[i]->next;
			free(gw->orig[i]);
			gw->orig[i] = o;
		}
	lg_acct_flush(gw);
	lg_buf_free(&gw->logbuf);
	lg_dash_free(gw); /* section 14: saved to state_dir first; only the first loop has one */
	if (gw->child) /* the first loop's, shared */
		gw->rs = NULL, gw->acct = NULL;
	if (gw->rs) {
		for (i = 0; i < 256; i++)
			while (gw->rs->tab[i]) {
				struct lg_health *h = gw->rs->tab[i]->next;
				free(gw->rs->tab[i]);
				gw->rs->tab[i] = h;
			}
		free(gw->rs);
	}
	if (gw->acct) {
		struct lg_acct *a = gw->acct;
		if (a->lfd >= 0) {
			fdatasync(a->lfd);
			close(a->lfd);
		}
		if (a->lockfd >= 0) close(a->lockfd); /* releases the state_dir lock */
		while (a->keys) {
			struct lg_kstate *k = a->keys->next;
			free(a->keys);
			a->keys = k;
		}
		lg_buf_free(&a->lbuf);
		free(a->ser);
		free(a->lpath);
		free(a);
	}
	if (gw->logfd >= 0) close(gw->logfd);
	lg_dns_free(gw->dns);
	if (gw->wake[0] >= 0) close(gw->wake[0]);
	if (gw->wake[1] >= 0) close(gw->wake[1]);
	lg_cfg_unref(gw->cfg);
	free(gw->heap);
	free(gw->pfd);
	free(gw->conns);
	free(gw->cfg_path);
	if (gw->sh && !gw->child) {
		lg_cfg_unref(gw->sh->cfg);
		pthread_mutex_destroy(&gw->sh->mu);
		free(gw->sh);
	}
	free(gw);
}

/* ===== 17. main ======================================================== */

#ifndef LLMGW_NO_MAIN

static struct llmgw *volatile lg_main_gw; /* the one file-scope variable: signal target */

/* The gateway leaves the signal handler's reach before it is freed: a
 * SIGTERM arriving as the process exits (after a drain) would otherwise
 * touch freed memory (musl unmaps it: a crash). */
static LG_COLD void lg_main_free(void)
{
	struct llmgw *gw = lg_main_gw;
	lg_main_gw = NULL;
	llmgw_free(gw);
}

static void lg_main_signal(int sig)
{
	struct llmgw *gw = lg_main_gw;
	if (!gw) return;
	if (sig == SIGHUP)
		llmgw_reload(gw);
	else
		llmgw_stop(gw);
}

/* what --keys calls the types and sections */
static const char lg_kt_names[][9] = {"string", "secret", "yes/no", "number", "number",
                                          "size",   "duration", "one of", "list", "see doc"};
static const char lg_ks_names[][13] = {"", "[gateway]", "[provider.*]", "[model.*]", "[key.*]", "[store]"};

static const char *lg_main_kdoc(const struct lg_cfg_key *k)
{
	const char *d = lg_cfg_kdflt(k);
	return d + strlen(d) + 1;
}

/* llmgw --keys: the key table, as README shows it. */
static LG_COLD void lg_main_keys(FILE *f)
{
	size_t i;
	fprintf(f, "| section | key | value | default | meaning |\n|---|---|---|---|---|\n");
	for (i = 0; i < LG_COUNTOF(lg_cfg_keys); i++) {
		const struct lg_cfg_key *k = &lg_cfg_keys[i];
		const char *d = lg_cfg_kdflt(k);
		char val[96];
		size_t o = 0;
		if (k->type == LG_KT_ENUM) {
			int n;
			for (n = 0; lg_cfg_enums[k->x].names[n][0]; n++) {
				if (n) o += lg_cpy(val + o, sizeof val - o, " \\| ");
				o += lg_cpy(val + o, sizeof val - o, lg_cfg_enums[k->x].names[n]);
			}
		} else {
			o += lg_cpy(val, sizeof val, lg_kt_names[k->type]);
		}
		if (k->repeat) lg_cpy(val + o, sizeof val - o, ", repeatable");
		fprintf(f, "| %s | `%s` | %s | %s%s%s | %s |\n", lg_ks_names[k->sec], k->name, val, *d ? "`" : "",
		        k->has_dflt ? (*d ? d : "empty") : "-", *d ? "`" : "", lg_main_kdoc(k));
	}
}

static LG_COLD void lg_main_usage(FILE *f)
{
	fprintf(f, "usage: llmgw [-c FILE] [-t] [--keys] [--help] [--version]\n"
	           "  -c FILE    configuration file (default: llmgw.ini)\n"
	           "  -t         check the configuration and exit (0 = good, 1 = errors)\n"
	           "  --keys     list every configuration key: section, value, default, meaning\n"
	           "  --version  print the version\n"
	           "Signals: SIGHUP reloads the configuration, SIGTERM and SIGINT drain and stop.\n"
	           "Configuration format: see README.md.\n");
}

LG_COLD int main(int argc, char **argv)
{
	const char *path = "llmgw.ini";
	int check = 0, i, rc;
	char err[1024];
	struct sigaction sa;
	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
			path = argv[++i];
		else if (strcmp(argv[i], "-t") == 0)
			check = 1;
		else if (strcmp(argv[i], "--keys") == 0) {
			lg_main_keys(stdout);
			return 0;
		}
		else if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-v") == 0) {
			printf("llmgw %s\n", LLMGW_VERSION);
			return 0;
		} else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			lg_main_usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "llmgw: unknown argument '%s'\n", argv[i]);
			lg_main_usage(stderr);
			return 2;
		}
	}
	if (check) {
		struct lg_cfg *c = lg_cfg_load(path, err, sizeof err);
		if (!c) {
			fprintf(stderr, "llmgw: %s\n", err);
			return 1;
		}
		printf("llmgw: %s is valid: %d providers, %d models, %d keys\n", path, c->nprov, c->nmodels,
		       c->nkeys);
		lg_price_list(c, stdout);
		lg_cfg_free(c);
		return 0;
	}
	lg_main_gw = llmgw_new();
	if (!lg_main_gw) {
		fprintf(stderr, "llmgw: out of memory\n");
		return 1;
	}
	if (llmgw_load_file(lg_main_gw, path, err, sizeof err)) {
		fprintf(stderr, "llmgw: %s\n", err);
		lg_main_free();
		return 1;
	}
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
	sa.sa_handler = lg_main_signal;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	if (llmgw_start(lg_main_gw, err, sizeof err)) {
		fprintf(stderr, "llmgw: %s\n", err);
		lg_main_free();
		return 1;
	}
	rc = llmgw_run(lg_main_gw);
	lg_main_free();
	return rc ? 1 : 0;
}

#endif /* LLMGW_NO_MAIN */
