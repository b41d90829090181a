// One DP16KD (512 x 36, read on port A, written on port B) between flip-flops, to read nextpnr-ecp5's
// clock-to-output of the block RAM with and without its output register (docs/board.md,
// "Two paths shortened"): chparam -set REGMODE "OUTREG" top before synth_ecp5.
module top #(parameter REGMODE = "NOREG") (input clk, input [9:0] addr, input [35:0] din, input we, output reg [35:0] q);
  reg [9:0] a; reg [35:0] d; reg w;
  wire [35:0] do;
  always @(posedge clk) begin a <= addr; d <= din; w <= we; q <= do ^ {36{we}}; end
  DP16KD #(.DATA_WIDTH_A(36), .DATA_WIDTH_B(36), .REGMODE_A(REGMODE), .REGMODE_B(REGMODE)) ram (
    .CLKA(clk), .CEA(1'b1), .OCEA(1'b1), .WEA(1'b0), .RSTA(1'b0), .CSA0(1'b0), .CSA1(1'b0), .CSA2(1'b0),
    .ADA13(a[8]), .ADA12(a[7]), .ADA11(a[6]), .ADA10(a[5]), .ADA9(a[4]), .ADA8(a[3]), .ADA7(a[2]), .ADA6(a[1]), .ADA5(a[0]), .ADA4(1'b0), .ADA3(1'b0), .ADA2(1'b0), .ADA1(1'b0), .ADA0(1'b0),
    .DOA0(do[0]), .DOA1(do[1]), .DOA2(do[2]), .DOA3(do[3]), .DOA4(do[4]), .DOA5(do[5]), .DOA6(do[6]), .DOA7(do[7]), .DOA8(do[8]), .DOA9(do[9]), .DOA10(do[10]), .DOA11(do[11]), .DOA12(do[12]), .DOA13(do[13]), .DOA14(do[14]), .DOA15(do[15]), .DOA16(do[16]), .DOA17(do[17]),
    .DOB0(do[18]), .DOB1(do[19]), .DOB2(do[20]), .DOB3(do[21]), .DOB4(do[22]), .DOB5(do[23]), .DOB6(do[24]), .DOB7(do[25]), .DOB8(do[26]), .DOB9(do[27]), .DOB10(do[28]), .DOB11(do[29]), .DOB12(do[30]), .DOB13(do[31]), .DOB14(do[32]), .DOB15(do[33]), .DOB16(do[34]), .DOB17(do[35]),
    .CLKB(clk), .CEB(1'b1), .OCEB(1'b1), .WEB(w), .RSTB(1'b0), .CSB0(1'b0), .CSB1(1'b0), .CSB2(1'b0),
    .ADB13(a[8]), .ADB12(a[7]), .ADB11(a[6]), .ADB10(a[5]), .ADB9(a[4]), .ADB8(a[3]), .ADB7(a[2]), .ADB6(a[1]), .ADB5(a[0]), .ADB4(1'b0), .ADB3(1'b0), .ADB2(1'b0), .ADB1(1'b0), .ADB0(1'b0),
    .DIA0(d[0]), .DIA1(d[1]), .DIA2(d[2]), .DIA3(d[3]), .DIA4(d[4]), .DIA5(d[5]), .DIA6(d[6]), .DIA7(d[7]), .DIA8(d[8]), .DIA9(d[9]), .DIA10(d[10]), .DIA11(d[11]), .DIA12(d[12]), .DIA13(d[13]), .DIA14(d[14]), .DIA15(d[15]), .DIA16(d[16]), .DIA17(d[17]),
    .DIB0(d[18]), .DIB1(d[19]), .DIB2(d[20]), .DIB3(d[21]), .DIB4(d[22]), .DIB5(d[23]), .DIB6(d[24]), .DIB7(d[25]), .DIB8(d[26]), .DIB9(d[27]), .DIB10(d[28]), .DIB11(d[29]), .DIB12(d[30]), .DIB13(d[31]), .DIB14(d[32]), .DIB15(d[33]), .DIB16(d[34]), .DIB17(d[35]));
endmodule
