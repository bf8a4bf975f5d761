import { test } from 'node:test';
import assert from 'node:assert/strict';
import { toHalfBits, fromHalfBits } from 'graphlens';

test('every float16 bit pattern survives a round trip through a number', () => {
  for (let bits = 0; bits < 0x10000; bits++) {
    const value = fromHalfBits(bits);
    if (Number.isNaN(value)) assert.ok(Number.isNaN(fromHalfBits(toHalfBits(value))));
    else assert.equal(toHalfBits(value), bits, `0x${bits.toString(16)}`);
  }
});

test('float32 → float16 rounds to nearest, ties to even, and saturates to infinity', () => {
  assert.equal(toHalfBits(1), 0x3c00);
  assert.equal(toHalfBits(1 + 2 ** -11), 0x3c00); // tie → even
  assert.equal(toHalfBits(1 + 3 * 2 ** -11), 0x3c02); // tie → even (up)
  assert.equal(toHalfBits(-2), 0xc000);
  assert.equal(toHalfBits(65504), 0x7bff);
  assert.equal(toHalfBits(70000), 0x7c00);
  assert.equal(toHalfBits(2 ** -24), 0x0001); // smallest subnormal
  assert.equal(toHalfBits(2 ** -26), 0x0000);
  assert.equal(fromHalfBits(0x3555), 0.333251953125);
});
