/* The C floor of `make bench` (bench/floor.lua builds and runs it): the work one client
 * call does, with no Lua at all. Per request: a nonce, a timestamp, the string to sign,
 * an RSA-2048 SHA-256 signature, the Authorization header, the request over one kept-alive
 * libcurl handle, the answer's Wechatpay-* headers and body, and the answer's signature
 * verified with the platform certificate. Prints the CPU (user + system) per request.
 *
 * usage: floor URL TARGET MCHID SERIAL KEY.pem PLATFORM_CERT.pem CA.pem N
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

typedef struct {
  char ts[32], nonce[80], sig[1024], serial[128];
  char *body;
  size_t len, cap;
} answer;

static void die(const char *what) {
  fprintf(stderr, "floor: %s\n", what);
  exit(1);
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

/* "Name: value\r\n" -> value into out when the name matches (case-insensitive). */
static void take(const char *line, size_t n, const char *name, char *out, size_t cap) {
  size_t k = strlen(name), v;
  if (n <= k + 1 || strncasecmp(line, name, k) != 0 || line[k] != ':') return;
  line += k + 1;
  n -= k + 1;
  while (n > 0 && *line == ' ') { line++; n--; }
  while (n > 0 && (line[n - 1] == '\r' || line[n - 1] == '\n' || line[n - 1] == ' ')) n--;
  v = n < cap - 1 ? n : cap - 1;
  memcpy(out, line, v);
  out[v] = '\0';
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud) {
  answer *a = ud;
  size_t n = size * nmemb;
  take(p, n, "Wechatpay-Timestamp", a->ts, sizeof a->ts);
  take(p, n, "Wechatpay-Nonce", a->nonce, sizeof a->nonce);
  take(p, n, "Wechatpay-Signature", a->sig, sizeof a->sig);
  take(p, n, "Wechatpay-Serial", a->serial, sizeof a->serial);
  return n;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud) {
  answer *a = ud;
  size_t n = size * nmemb;
  if (a->len + n + 1 > a->cap) {
    a->cap = (a->len + n + 1) * 2;
    a->body = realloc(a->body, a->cap);
    if (!a->body) die("out of memory");
  }
  memcpy(a->body + a->len, p, n);
  a->len += n;
  return n;
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  char *s;
  long n;
  if (!f) die(path);
  fseek(f, 0, SEEK_END);
  n = ftell(f);
  rewind(f);
  s = malloc((size_t)n + 1);
  if (!s || fread(s, 1, (size_t)n, f) != (size_t)n) die(path);
  s[n] = '\0';
  fclose(f);
  return s;
}

static EVP_PKEY *private_key(const char *path) {
  char *pem = slurp(path);
  BIO *b = BIO_new_mem_buf(pem, -1);
  EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
  BIO_free(b);
  free(pem);
  if (!k) die("cannot load the private key");
  return k;
}

static EVP_PKEY *certificate_key(const char *path) {
  char *pem = slurp(path);
  BIO *b = BIO_new_mem_buf(pem, -1);
  X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
  EVP_PKEY *k = x ? X509_get_pubkey(x) : NULL;
  X509_free(x);
  BIO_free(b);
  free(pem);
  if (!k) die("cannot load the platform certificate");
  return k;
}

/* The Authorization header of one request into out. */
static void authorization(EVP_PKEY *key, const char *mchid, const char *serial, const char *target,
                          char *out, size_t cap) {
  static const char hex[] = "0123456789ABCDEF";
  unsigned char rnd[16], sig[512];
  char nonce[33], msg[4096], b64[700];
  size_t siglen = sizeof sig;
  long long ts = (long long)time(NULL);
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  int i, mlen;
  if (RAND_bytes(rnd, sizeof rnd) != 1) die("RAND_bytes");
  for (i = 0; i < 16; i++) {
    nonce[2 * i] = hex[rnd[i] >> 4];
    nonce[2 * i + 1] = hex[rnd[i] & 15];
  }
  nonce[32] = '\0';
  mlen = snprintf(msg, sizeof msg, "GET\n%s\n%lld\n%s\n\n", target, ts, nonce);
  if (!ctx || EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key) != 1 ||
      EVP_DigestSign(ctx, sig, &siglen, (unsigned char *)msg, (size_t)mlen) != 1)
    die("signing failed");
  EVP_MD_CTX_free(ctx);
  EVP_EncodeBlock((unsigned char *)b64, sig, (int)siglen);
  snprintf(out, cap,
           "Authorization: WECHATPAY2-SHA256-RSA2048 mchid=\"%s\",nonce_str=\"%s\",timestamp=\"%lld\","
           "serial_no=\"%s\",signature=\"%s\"",
           mchid, nonce, ts, serial, b64);
}

static int verified(EVP_PKEY *pub, const answer *a) {
  unsigned char raw[1024];
  char *msg;
  size_t mlen = strlen(a->ts) + strlen(a->nonce) + a->len + 4;
  int rlen, pad = 0, ok;
  size_t slen = strlen(a->sig);
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (slen == 0 || slen > 1000) return 0;
  rlen = EVP_DecodeBlock(raw, (const unsigned char *)a->sig, (int)slen);
  if (slen >= 2 && a->sig[slen - 1] == '=') pad++;
  if (slen >= 2 && a->sig[slen - 2] == '=') pad++;
  msg = malloc(mlen);
  snprintf(msg, mlen, "%s\n%s\n", a->ts, a->nonce);
  mlen = strlen(msg);
  memcpy(msg + mlen, a->body ? a->body : "", a->len);
  mlen += a->len;
  msg[mlen++] = '\n';
  ok = ctx && rlen > pad && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pub) == 1 &&
       EVP_DigestVerify(ctx, raw, (size_t)(rlen - pad), (unsigned char *)msg, mlen) == 1;
  EVP_MD_CTX_free(ctx);
  free(msg);
  return ok;
}

static void one(CURL *c, EVP_PKEY *key, EVP_PKEY *pub, char **argv, const char *url, answer *a) {
  char auth[2048];
  struct curl_slist *h = NULL;
  long status = 0;
  authorization(key, argv[3], argv[4], argv[2], auth, sizeof auth);
  h = curl_slist_append(h, auth);
  h = curl_slist_append(h, "Accept: application/json");
  h = curl_slist_append(h, "User-Agent: wxpay-bench-floor");
  a->len = 0;
  a->ts[0] = a->nonce[0] = a->sig[0] = a->serial[0] = '\0';
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  if (curl_easy_perform(c) != CURLE_OK) die("request failed");
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(h);
  if (status != 200) die("answer is not 200");
  if (!verified(pub, a)) die("answer not verified");
}

int main(int argc, char **argv) {
  CURL *c;
  EVP_PKEY *key, *pub;
  answer a;
  char url[8192];
  int n, i;
  double t0;
  if (argc != 9) die("usage: floor URL TARGET MCHID SERIAL KEY.pem PLATFORM_CERT.pem CA.pem N");
  n = atoi(argv[8]);
  snprintf(url, sizeof url, "%s%s", argv[1], argv[2]);
  key = private_key(argv[5]);
  pub = certificate_key(argv[6]);
  memset(&a, 0, sizeof a);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  c = curl_easy_init();
  curl_easy_setopt(c, CURLOPT_CAINFO, argv[7]);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &a);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &a);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
  for (i = 0; i < 20; i++) one(c, key, pub, argv, url, &a); /* warm-up: connection, caches */
  t0 = cpu_seconds();
  for (i = 0; i < n; i++) one(c, key, pub, argv, url, &a);
  printf("cpu_per_request %.9f\n", (cpu_seconds() - t0) / n);
  curl_easy_cleanup(c);
  curl_global_cleanup();
  free(a.body);
  EVP_PKEY_free(key);
  EVP_PKEY_free(pub);
  return 0;
}
