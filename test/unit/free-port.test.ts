/**
 * The test kit's freePort(): a port that is free now, and never one it handed out before in this
 * process (the kernel may give the same ephemeral port to listen(0) twice in a row, which made a
 * test that asked for two ports get one port twice).
 */
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { freePort } from '../kit/process.js';

describe('freePort', () => {
  it('hands out ports that can be bound, none twice', async () => {
    const ports: number[] = [];
    for (let i = 0; i < 200; i++) ports.push(await freePort());
    expect(new Set(ports).size).toBe(ports.length);
    const last = ports.at(-1) as number;
    const s = net.createServer();
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.listen(last, '127.0.0.1', resolve);
    });
    expect((s.address() as net.AddressInfo).port).toBe(last);
    await new Promise<void>((r) => s.close(() => r()));
  });
});
