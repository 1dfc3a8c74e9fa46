/** The parts of hpack.js (a dev dependency, no types of its own) that test/kit/h2-raw.ts uses. */
declare module 'hpack.js' {
  interface HeaderField {
    name: string;
    value: string;
  }
  interface Decompressor {
    write(data: Buffer): boolean;
    execute(): void;
    read(): HeaderField | null;
    on(event: 'error', listener: (err: Error) => void): this;
  }
  const hpack: {
    /** RFC 7541 Appendix B: [bit length, code] for each of the 257 symbols (256 is EOS). */
    huffman: { encode: readonly (readonly [number, number])[] };
    decompressor: { create(options: { table: { size: number } }): Decompressor };
  };
  export default hpack;
}
