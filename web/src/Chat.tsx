/** The chat screens: conversation list, message list, composer. */
import { dmConv, type Attachment, type ConvSummary, type Message } from '@chatd/client';
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { t } from './i18n';
import { store, useStore, type Outgoing } from './store';
import { VirtualList } from './VirtualList';

function time(ts: number): string {
  const d = new Date(ts);
  return d.toDateString() === new Date().toDateString()
    ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleDateString();
}

function preview(m?: Message): string {
  if (!m) return '';
  if (m.kind === 'recalled') return t().recalled;
  if (m.kind === 'image') return `🖼 ${m.attachment?.name ?? ''}`;
  if (m.kind === 'file') return `📎 ${m.attachment?.name ?? ''}`;
  return m.body;
}

/** The conversation list with unread counts, mention markers and the group type. */
export function ConversationList() {
  const s = useStore();
  const [mode, setMode] = useState<'none' | 'dm' | 'group'>('none');
  return (
    <nav class="sidebar" aria-label={t().conversations}>
      <div class="sidebar-actions">
        <button type="button" onClick={() => setMode(mode === 'dm' ? 'none' : 'dm')} aria-expanded={mode === 'dm'}>
          + {t().newDm}
        </button>
        <button type="button" onClick={() => setMode(mode === 'group' ? 'none' : 'group')} aria-expanded={mode === 'group'}>
          + {t().newGroup}
        </button>
      </div>
      {mode === 'dm' && <NewDm done={() => setMode('none')} />}
      {mode === 'group' && <NewGroup done={() => setMode('none')} />}
      <ul class="convs" aria-label={t().conversations}>
        {s.convs.length === 0 && <li class="muted">{t().noConversations}</li>}
        {s.convs.map((c) => (
          <ConvItem key={c.conv} c={c} />
        ))}
      </ul>
    </nav>
  );
}

function ConvItem({ c }: { c: ConvSummary }) {
  const s = store;
  const kind = s.kind(c.conv);
  const active = s.active === c.conv;
  return (
    <li>
      <button
        type="button"
        class={`conv ${active ? 'active' : ''}`}
        aria-current={active ? 'true' : undefined}
        data-conv={c.conv}
        onClick={() => void s.open(c.conv)}
      >
        <span class="conv-top">
          <span class={`badge kind-${kind}`}>{(t().type as Record<string, string>)[kind] ?? kind}</span>
          <span class="conv-title">{s.title(c.conv)}</span>
          {c.mentioned && (
            <span class="mention" title={t().mentionedYou} aria-label={t().mentionedYou}>
              @
            </span>
          )}
          {c.unread > 0 && (
            <span class="unread" aria-label={`${c.unread} ${t().unread}`}>
              {c.unread > 99 ? '99+' : c.unread}
            </span>
          )}
        </span>
        <span class="conv-last">{preview(c.last_message)}</span>
      </button>
    </li>
  );
}

function NewDm({ done }: { done: () => void }) {
  const [user, setUser] = useState('');
  const submit = (e: Event) => {
    e.preventDefault();
    const me = store.me?.user;
    if (!user.trim() || !me) return;
    void store.open(dmConv(me, user.trim()));
    done();
  };
  return (
    <form class="mini-form" onSubmit={submit}>
      <label>
        {t().userId}
        <input value={user} onInput={(e) => setUser(e.currentTarget.value)} autoFocus name="dm-user" />
      </label>
      <button type="submit">{t().start}</button>
    </form>
  );
}

function NewGroup({ done }: { done: () => void }) {
  const [name, setName] = useState('');
  const [kind, setKind] = useState('project');
  const [members, setMembers] = useState('');
  const [err, setErr] = useState('');
  const submit = async (e: Event) => {
    e.preventDefault();
    try {
      const g = await store.api.createGroup({
        name,
        kind: kind as 'project',
        members: members.split(/[,，\s]+/).filter(Boolean),
      });
      store.groups.set(g.id, g);
      await store.client?.conversations();
      void store.open(`group:${g.id}`);
      done();
    } catch (x) {
      setErr((x as Error).message);
    }
  };
  return (
    <form class="mini-form" onSubmit={(e) => void submit(e)}>
      <label>
        {t().groupName}
        <input value={name} onInput={(e) => setName(e.currentTarget.value)} required name="group-name" />
      </label>
      <label>
        {t().groupKind}
        <select value={kind} onChange={(e) => setKind(e.currentTarget.value)} name="group-kind">
          {['project', 'study', 'external', 'company', 'department'].map((k) => (
            <option value={k} key={k}>
              {(t().type as Record<string, string>)[k]}
            </option>
          ))}
        </select>
      </label>
      <label>
        {t().members}
        <input value={members} onInput={(e) => setMembers(e.currentTarget.value)} name="group-members" />
      </label>
      {err && <p role="alert" class="error">{err}</p>}
      <button type="submit">{t().create}</button>
    </form>
  );
}

/** The open conversation: messages, typing, composer. */
export function ConversationView() {
  const s = useStore();
  const conv = s.active;
  if (!conv) return <main class="pane empty">{t().selectConversation}</main>;
  const cm = s.conv(conv);
  const outgoing = s.outgoing.filter((o) => o.conv === conv);
  const typers = s.typers(conv);
  const kind = s.kind(conv);
  const g = conv.startsWith('group:') ? s.groups.get(conv.slice(6)) : undefined;
  return (
    <main class="pane" aria-label={s.title(conv)}>
      <header class="pane-head">
        <h2>
          <span class={`badge kind-${kind}`}>{(t().type as Record<string, string>)[kind]}</span> {s.title(conv)}
        </h2>
        {g?.settings?.announcement && <p class="announcement">📢 {g.settings.announcement}</p>}
      </header>
      <MessageList conv={conv} list={cm.list} hasMore={cm.hasMore} loading={cm.loading} />
      <div class="outgoing" aria-live="polite">
        {outgoing.map((o) => (
          <OutgoingRow key={o.client_msg_id} o={o} />
        ))}
      </div>
      <div class="typing" aria-live="polite">
        {typers.length > 0 && `${typers.join(', ')} ${t().typing}`}
      </div>
      <Composer conv={conv} key={conv} />
    </main>
  );
}

function MessageList({ conv, list, hasMore, loading }: { conv: string; list: Message[]; hasMore: boolean; loading: boolean }) {
  return (
    <VirtualList
      key={conv}
      label={t().message}
      items={list}
      itemKey={(m) => m.seq}
      render={(m) => <MessageRow m={m} />}
      onTop={() => void store.older(conv)}
      header={<div class="list-head">{loading ? t().loadOlder : hasMore ? '' : t().beginning}</div>}
    />
  );
}

/** Downloads a file once per page and keeps a blob URL for it. */
const blobs = new Map<string, Promise<string>>();
function blobUrl(fileId: string): Promise<string> {
  let p = blobs.get(fileId);
  if (!p) {
    p = store.api.download(fileId).then((b) => URL.createObjectURL(b));
    blobs.set(fileId, p);
    p.catch(() => blobs.delete(fileId));
  }
  return p;
}

function ImagePreview({ a }: { a: Attachment }) {
  const [src, setSrc] = useState<string | null>(null);
  useEffect(() => {
    let live = true;
    blobUrl(a.file_id).then((u) => live && setSrc(u), () => {});
    return () => {
      live = false;
    };
  }, [a.file_id]);
  const w = Math.min(a.width ?? 240, 240);
  const h = a.width && a.height ? Math.round((a.height * w) / a.width) : 160;
  return src ? <img src={src} alt={a.name} width={w} height={h} class="image" /> : <div class="image placeholder" style={{ width: w, height: h }} />;
}

async function download(a: Attachment) {
  const url = await blobUrl(a.file_id);
  const link = document.createElement('a');
  link.href = url;
  link.download = a.name;
  link.click();
}

export function MessageRow({ m }: { m: Message }) {
  const s = store;
  const mine = m.from === s.me?.user;
  const note = s.notes.get(`${m.conv}#${m.seq}`);
  const reads = s.reads.get(m.conv);
  let readers = 0;
  if (mine && reads) for (const [u, seq] of reads) if (u !== m.from && seq >= m.seq) readers += 1;
  const isDm = m.conv.startsWith('dm:');
  const role = s.role(m.conv);
  const canRecall = m.kind !== 'recalled' && ((mine && Date.now() - m.ts < 120_000) || role === 'owner' || role === 'admin' || s.me?.company_admin);
  const replied = m.reply_to !== undefined ? s.messages.get(m.conv)?.list.find((x) => x.seq === m.reply_to) : undefined;
  return (
    <article class={`msg ${mine ? 'mine' : ''} ${m.mentioned ? 'mentioned' : ''}`} data-seq={m.seq} aria-label={`${m.from} ${time(m.ts)}`}>
      <div class="msg-meta">
        <strong>{m.from}</strong> <time dateTime={new Date(m.ts).toISOString()}>{time(m.ts)}</time>
      </div>
      {replied && <div class="quote">↩ {replied.from}: {preview(replied)}</div>}
      <div class="bubble">
        {m.kind === 'recalled' ? (
          <em class="muted">{t().recalled}</em>
        ) : (
          <>
            {m.kind === 'image' && m.attachment && <ImagePreview a={m.attachment} />}
            {m.kind === 'file' && m.attachment && (
              <button type="button" class="file" onClick={() => void download(m.attachment!)}>
                📎 {m.attachment.name} ({Math.ceil(m.attachment.size / 1024)} KB) · {t().download}
              </button>
            )}
            {m.body && <span class="body">{m.body}</span>}
          </>
        )}
      </div>
      {note && <div class={`note note-${note.action}`}>{note.action === 'mask' ? t().masked : t().warned}{note.category ? ` (${note.category})` : ''}</div>}
      <div class="msg-actions">
        {mine && readers > 0 && <span class="read-mark">{isDm ? t().read : `${t().readBy} ${readers}`}</span>}
        {m.kind !== 'recalled' && (
          <button type="button" class="link" onClick={() => composerReply.set?.(m)}>
            {t().reply}
          </button>
        )}
        {canRecall && (
          <button type="button" class="link" onClick={() => void s.client?.recall(m.conv, m.seq).catch((e) => alert((e as Error).message))}>
            {t().recall}
          </button>
        )}
        {(role === 'owner' || role === 'admin') && m.conv.startsWith('group:') && m.kind !== 'recalled' && (
          <button type="button" class="link" onClick={() => void s.api.call('PUT', `/v1/groups/${m.conv.slice(6)}/pins/${m.seq}`).then(() => s.loadGroup(m.conv.slice(6)), (e) => alert((e as Error).message))}>
            {t().pin}
          </button>
        )}
      </div>
    </article>
  );
}

function OutgoingRow({ o }: { o: Outgoing }) {
  const text: Record<Outgoing['status'], string> = {
    sending: t().sending,
    held: t().held,
    approval: t().approval,
    blocked: t().blocked,
    muted: t().muted,
    rejected: t().rejected,
    failed: t().failed,
  };
  const final = o.status !== 'sending';
  return (
    <div class={`msg mine pending status-${o.status}`} data-status={o.status}>
      <div class="bubble">{o.kind === 'text' ? o.body : `${o.attachment?.name ?? ''} ${o.body}`}</div>
      <div class={`note note-${o.status}`} role={o.status === 'blocked' || o.status === 'failed' ? 'alert' : undefined}>
        {text[o.status]}
        {o.note && o.status !== 'sending' ? ` (${o.note})` : ''}
        {final && (
          <button type="button" class="link" onClick={() => store.dismiss(o)} aria-label="dismiss">
            ✕
          </button>
        )}
      </div>
    </div>
  );
}

/** Lets a message row start a reply in the composer. */
const composerReply: { set?: (m: Message | null) => void } = {};

function Composer({ conv }: { conv: string }) {
  const s = useStore();
  const [text, setText] = useState('');
  const [reply, setReply] = useState<Message | null>(null);
  // The text after an `@` being typed (lower case), or null: the suggestions follow both it and
  // the member list, so they appear even when the group arrives after the `@` was typed.
  const [query, setQuery] = useState<string | null>(null);
  const [pick, setPick] = useState(0);
  const input = useRef<HTMLTextAreaElement>(null);
  const file = useRef<HTMLInputElement>(null);
  const lastTyping = useRef(0);
  composerReply.set = (m) => {
    setReply(m);
    input.current?.focus();
  };
  const group = conv.startsWith('group:') ? s.groups.get(conv.slice(6)) : undefined;
  const members = useMemo(() => (group?.members ?? []).map((m) => m.user).filter((u) => u !== s.me?.user), [group]);
  const suggest = useMemo(
    () => (query === null || !group ? [] : ['all', ...members].filter((u) => u.toLowerCase().startsWith(query)).slice(0, 8)),
    [query, group, members],
  );

  const onInput = (v: string) => {
    setText(v);
    const now = Date.now();
    if (now - lastTyping.current > 3000) {
      lastTyping.current = now;
      s.client?.typing(conv);
    }
    const at = /@([\w.@-]*)$/.exec(v.slice(0, input.current?.selectionStart ?? v.length));
    setQuery(at ? at[1]!.toLowerCase() : null);
    setPick(0);
  };

  const choose = (u: string) => {
    const el = input.current;
    const pos = el?.selectionStart ?? text.length;
    const before = text.slice(0, pos).replace(/@([\w.@-]*)$/, `@${u} `);
    setText(before + text.slice(pos));
    setQuery(null);
    el?.focus();
  };

  const submit = () => {
    const body = text.trim();
    if (!body) return;
    const mentions = group ? ['all', ...members].filter((u) => new RegExp(`@${u.replace(/[.]/g, '\\.')}(\\s|$)`).test(body)) : [];
    void s.send(conv, body, { mentions, reply_to: reply?.seq });
    setText('');
    setReply(null);
  };

  const onKey = (e: KeyboardEvent) => {
    if (suggest.length > 0) {
      if (e.key === 'ArrowDown') {
        e.preventDefault();
        setPick((pick + 1) % suggest.length);
        return;
      }
      if (e.key === 'ArrowUp') {
        e.preventDefault();
        setPick((pick - 1 + suggest.length) % suggest.length);
        return;
      }
      if (e.key === 'Enter' || e.key === 'Tab') {
        e.preventDefault();
        choose(suggest[pick]!);
        return;
      }
      if (e.key === 'Escape') {
        setQuery(null);
        return;
      }
    }
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    }
  };

  const onFile = async (f: File) => {
    try {
      const a = await s.api.upload(f, f.name);
      const image = f.type.startsWith('image/');
      if (image) {
        try {
          const bmp = await createImageBitmap(f);
          a.width = bmp.width;
          a.height = bmp.height;
        } catch {
          /* not decodable: sent without a size */
        }
      }
      await s.send(conv, text.trim(), { kind: image ? 'image' : 'file', attachment: a });
      setText('');
    } catch (x) {
      alert((x as Error).message);
    }
  };

  return (
    <form
      class="composer"
      onSubmit={(e) => {
        e.preventDefault();
        submit();
      }}
    >
      {reply && (
        <div class="replying">
          {t().replyingTo} {reply.from}: {preview(reply)}
          <button type="button" class="link" onClick={() => setReply(null)} aria-label={t().cancel}>
            ✕
          </button>
        </div>
      )}
      {suggest.length > 0 && (
        <ul class="suggest" role="listbox" aria-label="@">
          {suggest.map((u, i) => (
            <li key={u} role="option" aria-selected={i === pick} class={i === pick ? 'picked' : ''} onMouseDown={(e) => { e.preventDefault(); choose(u); }}>
              @{u}
            </li>
          ))}
        </ul>
      )}
      <div class="composer-row">
        <label class="sr-only" for="composer-input">
          {t().message}
        </label>
        <textarea
          id="composer-input"
          ref={input}
          value={text}
          rows={2}
          placeholder={t().message}
          onInput={(e) => onInput(e.currentTarget.value)}
          onKeyDown={onKey}
        />
        <input ref={file} type="file" class="sr-only" id="composer-file" aria-label={t().attach} onChange={(e) => { const f = e.currentTarget.files?.[0]; if (f) void onFile(f); e.currentTarget.value = ''; }} />
        <button type="button" onClick={() => file.current?.click()} aria-label={t().attach} title={t().attach}>
          📎
        </button>
        <button type="submit">{t().send}</button>
      </div>
    </form>
  );
}
