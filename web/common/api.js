// JSON fetch wrapper for the vteller HTTP API (docs/protocol.md §1).
let csrfToken = null;

const STATE_CHANGING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

export class ApiError extends Error {
  /** `field` and `rule`: what an `invalid_request` refuses (docs/protocol.md), else null. */
  constructor(code, message, status, retryAfter = null, { field = null, rule = null } = {}) {
    super(message || code);
    this.name = 'ApiError';
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
    this.field = typeof field === 'string' ? field : null;
    this.rule = typeof rule === 'string' ? rule : null;
  }
}

export function clearCsrfToken() {
  csrfToken = null;
}

async function request(method, path, body, contentType = 'application/json') {
  const headers = { Accept: 'application/json' };
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

  let data = null;
  try {
    data = await response.json();
  } catch {
    /* empty or non-JSON body: judged by status below */
  }

  if (!response.ok) {
    const error = data?.error ?? {};
    const retryAfter = Number(response.headers.get('Retry-After')) || null;
    throw new ApiError(error.code ?? `http_${response.status}`, error.message ?? response.statusText,
      response.status, retryAfter, error);
  }
  // Login, /auth/me, the join call and /customer/me all hand out the token the next POST needs.
  if (data && typeof data.csrf_token === 'string') csrfToken = data.csrf_token;
  return data;
}

export const get = (path) => request('GET', path);
export const post = (path, body = {}) => request('POST', path, body);
/** POST a Blob as it is (e.g. a signature PNG), with the CSRF token. */
export const postBlob = (path, blob) => request('POST', path, blob, blob.type);
