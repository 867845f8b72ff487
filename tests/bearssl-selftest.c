/*
 * bearssl-selftest.c - smoke test for a libbearssl.a built by vendor/bearssl.sh.
 *
 *   sh vendor/bearssl.sh selftest CC=cc OUT=build/bearssl/native
 * or by hand:
 *   cc -Ibuild/bearssl/native/inc vendor/bearssl-selftest.c build/bearssl/native/libbearssl.a
 *
 * Checks known-answer vectors for SHA-256 (FIPS 180-2) and HMAC-SHA-256
 * (RFC 4231), that the OS entropy source is found, and that a TLS client
 * engine (the T0-generated handshake code) produces a ClientHello.
 * Exits 0 if everything passed.
 */
#include <stdio.h>
#include <string.h>
#include "bearssl.h"

static int passed, failed;

static void check(int ok, const char *name)
{
	printf("%s - %s\n", ok ? "ok" : "FAIL", name);
	if (ok)
		passed++;
	else
		failed++;
}

static void hex(const unsigned char *b, size_t n, char *out)
{
	static const char d[] = "0123456789abcdef";
	size_t i;
	for (i = 0; i < n; i++) {
		out[2 * i] = d[b[i] >> 4];
		out[2 * i + 1] = d[b[i] & 15];
	}
	out[2 * n] = 0;
}

static int sha256_is(const char *msg, const char *want)
{
	br_sha256_context c;
	unsigned char h[32];
	char s[65];
	br_sha256_init(&c);
	br_sha256_update(&c, msg, strlen(msg));
	br_sha256_out(&c, h);
	hex(h, sizeof h, s);
	return strcmp(s, want) == 0;
}

static int hmac_sha256_is(const void *key, size_t klen, const char *msg, const char *want)
{
	br_hmac_key_context kc;
	br_hmac_context hc;
	unsigned char out[32];
	char s[65];
	br_hmac_key_init(&kc, &br_sha256_vtable, key, klen);
	br_hmac_init(&hc, &kc, 0);
	br_hmac_update(&hc, msg, strlen(msg));
	if (br_hmac_out(&hc, out) != 32)
		return 0;
	hex(out, sizeof out, s);
	return strcmp(s, want) == 0;
}

int main(void)
{
	/* SHA-256, FIPS 180-2 appendix B */
	check(sha256_is("abc",
		"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
		"SHA-256(\"abc\")");
	check(sha256_is("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
		"248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
		"SHA-256(448-bit message)");

	/* HMAC-SHA-256, RFC 4231 test cases 1 and 2 */
	{
		unsigned char k[20];
		memset(k, 0x0b, sizeof k);
		check(hmac_sha256_is(k, sizeof k, "Hi There",
			"b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
			"HMAC-SHA-256 RFC 4231 case 1");
	}
	check(hmac_sha256_is("Jefe", 4, "what do ya want for nothing?",
		"5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
		"HMAC-SHA-256 RFC 4231 case 2");

	/* OS entropy source (e.g. getrandom or /dev/urandom) */
	{
		const char *name = NULL;
		br_prng_seeder seeder = br_prng_seeder_system(&name);
		br_hmac_drbg_context rng;
		int ok = 0;
		if (seeder != NULL) {
			br_hmac_drbg_init(&rng, &br_sha256_vtable, NULL, 0);
			ok = seeder(&rng.vtable);
		}
		printf("# system seeder: %s\n", name ? name : "(none)");
		check(ok, "system entropy seeder");
	}

	/* TLS client engine: a reset must queue a ClientHello handshake record. */
	{
		static unsigned char iobuf[BR_SSL_BUFSIZE_BIDI];
		br_ssl_client_context cc;
		br_x509_minimal_context xc;
		unsigned char *rec;
		size_t len = 0;
		int ok;
		br_ssl_client_init_full(&cc, &xc, NULL, 0);
		br_ssl_engine_set_buffer(&cc.eng, iobuf, sizeof iobuf, 1);
		ok = br_ssl_client_reset(&cc, "example.com", 0);
		ok = ok && (br_ssl_engine_current_state(&cc.eng) & BR_SSL_SENDREC);
		rec = ok ? br_ssl_engine_sendrec_buf(&cc.eng, &len) : NULL;
		ok = ok && rec != NULL && len > 5 && rec[0] == 22 && rec[1] == 3;
		printf("# ClientHello record: %lu bytes\n", (unsigned long)len);
		check(ok, "TLS client engine emits ClientHello");
	}

	printf("bearssl-selftest: %d passed, %d failed\n", passed, failed);
	return failed != 0;
}
