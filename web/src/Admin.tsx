/**
 * Administration: group owners/admins (members, roles, mutes, kicks, bans, pins,
 * announcements), reviewers (held messages and posts awaiting approval) and company
 * administrators (directory, audit log, penalties). Every action is an HTTP API call; the
 * server checks the caller's rights, the UI only hides what cannot work.
 */
import type { Account, AuditEntry, Department, Group, HeldMessage, Post } from '@chatd/client';
import { useEffect, useState } from 'preact/hooks';
import { t } from './i18n';
import { store, useStore } from './store';

type Tab = 'group' | 'review' | 'directory' | 'audit' | 'penalties';

export function AdminView() {
  const s = useStore();
  const me = s.me;
  const tabs: Tab[] = ['group', 'review'];
  if (me?.company_admin) tabs.push('directory', 'audit', 'penalties');
  const [tab, setTab] = useState<Tab>('review');
  const names: Record<Tab, string> = { group: t().groupAdmin, review: t().review, directory: t().directory, audit: t().audit, penalties: t().penalties };
  return (
    <main class="pane admin" aria-label={t().admin}>
      <div role="tablist" class="tabs" aria-label={t().admin}>
        {tabs.map((x) => (
          <button type="button" role="tab" key={x} aria-selected={tab === x} class={tab === x ? 'active' : ''} onClick={() => setTab(x)} data-tab={x}>
            {names[x]}
          </button>
        ))}
      </div>
      <section role="tabpanel" class="tabpanel">
        {tab === 'group' && <GroupAdmin />}
        {tab === 'review' && <Review />}
        {tab === 'directory' && <Directory />}
        {tab === 'audit' && <Audit />}
        {tab === 'penalties' && <Penalties />}
      </section>
    </main>
  );
}

function useAction() {
  const [msg, setMsg] = useState<{ ok: boolean; text: string } | null>(null);
  const run = async (f: () => Promise<unknown>, after?: () => unknown) => {
    try {
      await f();
      setMsg({ ok: true, text: t().done });
      await after?.();
    } catch (e) {
      setMsg({ ok: false, text: (e as Error).message });
    }
  };
  const view = msg && (
    <p role={msg.ok ? 'status' : 'alert'} class={msg.ok ? 'ok' : 'error'}>
      {msg.text}
    </p>
  );
  return { run, view };
}

/** The groups the caller administers. */
function adminGroups(): Group[] {
  const s = store;
  return [...s.groups.values()].filter((g) => s.me?.company_admin || g.role === 'owner' || g.role === 'admin');
}

function GroupAdmin() {
  const s = useStore();
  const groups = adminGroups();
  const initial = s.active?.startsWith('group:') ? s.active.slice(6) : groups[0]?.id;
  const [id, setId] = useState<string | undefined>(initial);
  const [g, setG] = useState<Group | null>(null);
  const [add, setAdd] = useState('');
  const [ann, setAnn] = useState('');
  const { run, view } = useAction();
  const reload = async () => {
    if (!id) return;
    const full = await s.loadGroup(id);
    setG(full);
    setAnn(full?.settings?.announcement ?? '');
  };
  useEffect(() => {
    void reload();
  }, [id]);
  useEffect(() => {
    // Company administrators act as the owner of every group: offer the groups the audit
    // log names, not only their own.
    if (!s.me?.company_admin) return;
    void s.api
      .audit({ limit: 1000 })
      .then(async (rows) => {
        const ids = new Set(rows.filter((r) => r.action === 'group.create' && r.conv?.startsWith('group:')).map((r) => r.conv!.slice(6)));
        for (const gid of [...ids].slice(0, 50)) if (!s.groups.has(gid)) await s.loadGroup(gid);
        if (!id) setId([...s.groups.keys()][0]);
      })
      .catch(() => {});
  }, []);
  if (groups.length === 0) return <p>{t().notAllowed}</p>;
  const base = `/v1/groups/${encodeURIComponent(id ?? '')}`;
  const settings = g?.settings;
  return (
    <div>
      <label>
        {t().groupAdmin}{' '}
        <select value={id} onChange={(e) => setId(e.currentTarget.value)} name="admin-group">
          {groups.map((x) => (
            <option key={x.id} value={x.id}>
              {x.name} ({(t().type as Record<string, string>)[x.kind]})
            </option>
          ))}
        </select>
      </label>
      {view}
      {g && settings && (
        <>
          <h3>{t().memberList}</h3>
          <table class="grid">
            <thead>
              <tr>
                <th>{t().user}</th>
                <th>{t().role}</th>
                <th>{t().status}</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {(g.members ?? []).map((m) => {
                const until = settings.mutes[m.user];
                return (
                  <tr key={m.user} data-member={m.user}>
                    <td>{m.user}</td>
                    <td>{m.role === 'admin' ? t().adminRole : m.role === 'owner' ? t().owner : t().member}</td>
                    <td>{until ? `${t().mutedUntil} ${new Date(until).toLocaleTimeString()}` : ''}</td>
                    <td class="actions">
                      {m.role !== 'owner' && (
                        <>
                          <button type="button" onClick={() => void run(() => s.api.call('PUT', `${base}/members/${m.user}/role`, { role: m.role === 'admin' ? 'member' : 'admin' }), reload)}>
                            {m.role === 'admin' ? t().makeMember : t().makeAdmin}
                          </button>
                          {until ? (
                            <button type="button" onClick={() => void run(() => s.api.call('DELETE', `${base}/mutes/${m.user}`), reload)}>{t().unmute}</button>
                          ) : (
                            <button type="button" onClick={() => void run(() => s.api.call('POST', `${base}/mutes`, { user: m.user, duration_secs: 3600 }), reload)}>{t().mute}</button>
                          )}
                          <button type="button" onClick={() => void run(() => s.api.call('DELETE', `${base}/members/${m.user}`), reload)}>{t().kick}</button>
                          <button type="button" onClick={() => void run(() => s.api.call('POST', `${base}/bans`, { user: m.user }), reload)}>{t().ban}</button>
                        </>
                      )}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
          <form class="inline" onSubmit={(e) => { e.preventDefault(); void run(() => s.api.call('POST', `${base}/members`, { user: add.trim() }), reload); setAdd(''); }}>
            <label>
              {t().addMember} <input value={add} onInput={(e) => setAdd(e.currentTarget.value)} name="add-member" />
            </label>
            <button type="submit">{t().add}</button>
          </form>
          <p>
            <button type="button" onClick={() => void run(() => s.api.call('PUT', `${base}/muted_all`, { muted: !settings.muted_all }), reload)}>
              {settings.muted_all ? t().unmuteAll : t().muteAll}
            </button>
          </p>
          {settings.banned.length > 0 && (
            <>
              <h3>{t().banned}</h3>
              <ul>
                {settings.banned.map((u) => (
                  <li key={u}>
                    {u} <button type="button" onClick={() => void run(() => s.api.call('DELETE', `${base}/bans/${u}`), reload)}>{t().unban}</button>
                  </li>
                ))}
              </ul>
            </>
          )}
          <h3>{t().pins}</h3>
          <ul>
            {settings.pinned.map((seq) => (
              <li key={seq}>
                #{seq} {s.messages.get(`group:${g.id}`)?.list.find((m) => m.seq === seq)?.body ?? ''}{' '}
                <button type="button" onClick={() => void run(() => s.api.call('DELETE', `${base}/pins/${seq}`), reload)}>{t().unpin}</button>
              </li>
            ))}
          </ul>
          <h3>{t().announcement}</h3>
          <form
            class="inline"
            onSubmit={(e) => {
              e.preventDefault();
              void run(async () => {
                const r = await s.api.call<{ status: string }>('PUT', `${base}/announcement`, { text: ann });
                if (r.status === 'pending') throw new Error(t().pendingApproval);
              }, reload);
            }}
          >
            <label class="grow">
              {t().announcement} <textarea value={ann} onInput={(e) => setAnn(e.currentTarget.value)} rows={2} name="announcement" />
            </label>
            <button type="submit">{t().publish}</button>
          </form>
        </>
      )}
    </div>
  );
}

function Review() {
  const s = useStore();
  const [held, setHeld] = useState<HeldMessage[]>([]);
  const [posts, setPosts] = useState<Post[]>([]);
  const { run, view } = useAction();
  const load = async () => {
    const convs = new Set(adminGroups().map((g) => `group:${g.id}`));
    if (s.me?.company_admin) {
      // Company administrators review every conversation: the audit log names those where
      // something was held.
      for (const c of s.convs) convs.add(c.conv);
      const held = await s.api.audit({ limit: 1000 }).catch(() => []);
      for (const r of held) if (r.action === 'moderation.review' && r.conv) convs.add(r.conv);
    }
    const all: HeldMessage[] = [];
    await Promise.all(
      [...convs].map(async (c) => {
        try {
          all.push(...(await s.api.review(c)));
        } catch {
          /* not an admin there */
        }
      }),
    );
    all.sort((a, b) => a.ts - b.ts);
    setHeld(all);
    for (const h of all) if (h.conv.startsWith('group:') && !s.groups.has(h.conv.slice(6))) void s.loadGroup(h.conv.slice(6));
    if (s.me?.reviewer) setPosts(await s.api.posts('pending').catch(() => []));
  };
  useEffect(() => {
    void load();
  }, [s.convs.length]);
  return (
    <div>
      {view}
      <h3>{t().heldMessages}</h3>
      {held.length === 0 && <p class="muted">{t().nothingToReview}</p>}
      <ul class="review">
        {held.map((h) => (
          <li key={h.id} data-held={h.id}>
            <div>
              <strong>{h.from}</strong> → {s.title(h.conv)} · {new Date(h.ts).toLocaleString()} · {h.category}
            </div>
            <blockquote>{h.body}</blockquote>
            <button type="button" onClick={() => void run(() => s.api.decide(h.conv, h.id, true), load)}>{t().approve}</button>{' '}
            <button type="button" onClick={() => void run(() => s.api.decide(h.conv, h.id, false), load)}>{t().reject}</button>
          </li>
        ))}
      </ul>
      {s.me?.reviewer && (
        <>
          <h3>{t().posts}</h3>
          {posts.length === 0 && <p class="muted">{t().nothingToReview}</p>}
          <ul class="review">
            {posts.map((p) => (
              <li key={p.id} data-post={p.id}>
                <div>
                  <strong>{p.author}</strong> → {s.groups.get(p.group)?.name ?? p.group} · {p.kind}
                </div>
                <blockquote>{p.body}</blockquote>
                <button type="button" onClick={() => void run(() => s.api.decidePost(p.id, true), load)}>{t().approve}</button>{' '}
                <button type="button" onClick={() => void run(() => s.api.decidePost(p.id, false), load)}>{t().reject}</button>
              </li>
            ))}
          </ul>
        </>
      )}
    </div>
  );
}

function Directory() {
  const s = useStore();
  const [q, setQ] = useState('');
  const [users, setUsers] = useState<Account[]>([]);
  const [deps, setDeps] = useState<Department[]>([]);
  const [nu, setNu] = useState({ id: '', name: '', department: '', password: '' });
  const [successor, setSuccessor] = useState('');
  const { run, view } = useAction();
  const load = async () => {
    setUsers(await s.api.users(q || undefined, { include_deactivated: true, limit: 200 }));
    setDeps(await s.api.departments().catch(() => []));
  };
  useEffect(() => {
    void load().catch(() => {});
  }, []);
  return (
    <div>
      {view}
      <form class="inline" onSubmit={(e) => { e.preventDefault(); void run(load); }}>
        <label>
          {t().search} <input value={q} onInput={(e) => setQ(e.currentTarget.value)} name="dir-q" />
        </label>
        <button type="submit">{t().search}</button>
      </form>
      <label>
        {t().successor} <input value={successor} onInput={(e) => setSuccessor(e.currentTarget.value.trim())} name="dir-successor" autoComplete="off" />
      </label>
      <table class="grid">
        <thead>
          <tr>
            <th>{t().userId}</th>
            <th>{t().name}</th>
            <th>{t().department}</th>
            <th>{t().status}</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {users.map((u) => (
            <tr key={u.id} data-user={u.id}>
              <td>{u.id}</td>
              <td>{u.name}</td>
              <td>{u.department ?? ''}</td>
              <td>{u.status}</td>
              <td>
                <button
                  type="button"
                  onClick={() =>
                    void run(
                      () =>
                        u.status === 'active'
                          ? s.api.call('POST', `/v1/users/${u.id}/deactivate`, successor ? { successor } : undefined)
                          : s.api.call('POST', `/v1/users/${u.id}/activate`),
                      load,
                    )
                  }
                >
                  {u.status === 'active' ? t().deactivate : t().activate}
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      <h3>{t().createUser}</h3>
      <form
        class="inline"
        onSubmit={(e) => {
          e.preventDefault();
          void run(() => s.api.call('POST', '/v1/users', { id: nu.id, name: nu.name, department: nu.department || undefined, password: nu.password || undefined }), load);
        }}
      >
        {(['id', 'name', 'department', 'password'] as const).map((k) => (
          <label key={k}>
            {k === 'id' ? t().userId : k === 'name' ? t().name : k === 'department' ? t().department : t().password}{' '}
            <input type={k === 'password' ? 'password' : 'text'} value={nu[k]} onInput={(e) => setNu({ ...nu, [k]: e.currentTarget.value })} name={`new-${k}`} autoComplete="off" />
          </label>
        ))}
        <button type="submit">{t().create}</button>
      </form>
      <h3>{t().departments}</h3>
      <ul>
        {deps.map((d) => (
          <li key={d.id}>
            {d.name} ({d.id}){d.parent ? ` ← ${d.parent}` : ''}
          </li>
        ))}
      </ul>
    </div>
  );
}

function Audit() {
  const s = useStore();
  const [f, setF] = useState({ user: '', conv: '', category: '', since: '' });
  const [rows, setRows] = useState<AuditEntry[]>([]);
  const { run, view } = useAction();
  const load = () =>
    s.api
      .audit({ user: f.user || undefined, conv: f.conv || undefined, category: f.category || undefined, since: f.since ? Date.parse(f.since) : undefined, limit: 200 })
      .then(setRows);
  useEffect(() => {
    void load().catch(() => {});
  }, []);
  return (
    <div>
      {view}
      <form class="inline" onSubmit={(e) => { e.preventDefault(); void run(load); }}>
        {(['user', 'conv', 'category'] as const).map((k) => (
          <label key={k}>
            {t()[k]} <input value={f[k]} onInput={(e) => setF({ ...f, [k]: e.currentTarget.value })} name={`audit-${k}`} />
          </label>
        ))}
        <label>
          {t().since} <input type="datetime-local" value={f.since} onInput={(e) => setF({ ...f, since: e.currentTarget.value })} name="audit-since" />
        </label>
        <button type="submit">{t().filter}</button>
      </form>
      <table class="grid">
        <thead>
          <tr>
            <th>{t().time}</th>
            <th>{t().actor}</th>
            <th>{t().action}</th>
            <th>{t().conv}</th>
            <th>{t().user}</th>
            <th>{t().category}</th>
            <th>{t().detail}</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((r, i) => (
            <tr key={i}>
              <td>{new Date(r.ts).toLocaleString()}</td>
              <td>{r.actor}</td>
              <td>{r.action}</td>
              <td>{r.conv ?? ''}</td>
              <td>{r.target ?? ''}</td>
              <td>{r.category ?? ''}</td>
              <td>{r.detail ?? r.message ?? ''}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function Penalties() {
  const s = useStore();
  const [rows, setRows] = useState<AuditEntry[]>([]);
  const [user, setUser] = useState('');
  const { run, view } = useAction();
  const load = async () => {
    const all = await s.api.audit({ limit: 500 });
    setRows(all.filter((r) => r.action.startsWith('escalation.') || r.action === 'moderation.lift'));
  };
  useEffect(() => {
    void load().catch(() => {});
  }, []);
  return (
    <div>
      {view}
      <form class="inline" onSubmit={(e) => { e.preventDefault(); void run(() => s.api.call('POST', `/v1/admin/users/${encodeURIComponent(user.trim())}/lift`), load); }}>
        <label>
          {t().user} <input value={user} onInput={(e) => setUser(e.currentTarget.value)} name="lift-user" />
        </label>
        <button type="submit">{t().lift}</button>
      </form>
      <table class="grid">
        <thead>
          <tr>
            <th>{t().time}</th>
            <th>{t().user}</th>
            <th>{t().action}</th>
            <th>{t().detail}</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {rows.map((r, i) => (
            <tr key={i}>
              <td>{new Date(r.ts).toLocaleString()}</td>
              <td>{r.target ?? r.actor}</td>
              <td>{r.action}</td>
              <td>{r.detail ?? ''}</td>
              <td>
                {r.action !== 'moderation.lift' && (
                  <button type="button" onClick={() => void run(() => s.api.call('POST', `/v1/admin/users/${encodeURIComponent(r.target ?? r.actor)}/lift`), load)}>{t().lift}</button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
