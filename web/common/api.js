// JSON fetch wrapper for the vteller HTTP API (docs/protocol.md §1).
let csrfToken = null;

const STATE_CHANGING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

export class ApiError extends Error {
  constructor(code, message, status, retryAfter = null) {
    super(message || code);
    this.name = 'ApiError';
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

export function clearCsrfToken() {
  csrfToken = null;
}

/** The response to a successful request (with the CSRF token if it changes state); an ApiError
 * for anything else. */
async function send(method, path, body, contentType, accept) {
  const headers = { Accept: accept };
  if (body !== undefined) headers['Content-Type'] = contentType;
  if (STATE_CHANGING.has(method) && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  const raw = body instanceof Blob;

  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined || raw ? body : JSON.stringify(body),
      credentials: 'same-origin',
    });
  } catch (err) {
    throw new ApiError('network', err.message, 0);
  }
  if (response.ok) return response;

  const data = await json(response);
  const error = data?.error ?? {};
  const retryAfter = Number(response.headers.get('Retry-After')) || null;
  throw new ApiError(error.code ?? `http_${response.status}`, error.message ?? response.statusText,
    response.status, retryAfter);
}

async function json(response) {
  try {
    return await response.json();
  } catch {
    return null; // empty or non-JSON body: judged by its status
  }
}

async function request(method, path, body, contentType = 'application/json') {
  const data = await json(await send(method, path, body, contentType, 'application/json'));
  // Login, /auth/me, the join call and /customer/me all hand out the token the next POST needs.
  if (data && typeof data.csrf_token === 'string') csrfToken = data.csrf_token;
  return data;
}

export const get = (path) => request('GET', path);
export const post = (path, body = {}) => request('POST', path, body);
/** POST a Blob as it is (e.g. a signature PNG), with the CSRF token. */
export const postBlob = (path, blob) => request('POST', path, blob, blob.type);

/** POST with the CSRF token for a file the server makes (an export): `{ blob, filename }`, the
 * filename from Content-Disposition. `onProgress(received, total)` follows the download (total
 * 0 when the server does not say). */
export async function postForFile(path, onProgress = () => {}) {
  const response = await send('POST', path, undefined, undefined, '*/*');
  const total = Number(response.headers.get('Content-Length')) || 0;
  let received = 0;
  const counted = response.body.pipeThrough(new TransformStream({
    transform(chunk, controller) {
      received += chunk.byteLength;
      onProgress(received, total);
      controller.enqueue(chunk);
    },
  }));
  let blob;
  try {
    // The browser assembles the Blob, and may keep a large one on disk: the page holds no copy.
    blob = await new Response(counted).blob();
  } catch (err) {
    throw new ApiError('network', err.message, 0);
  }
  const disposition = response.headers.get('Content-Disposition') ?? '';
  const filename = /filename="([^"]+)"/.exec(disposition)?.[1] ?? 'download';
  return { blob, filename };
}
